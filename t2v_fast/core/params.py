"""Generation parameters: declared once, as dataclass fields with metadata, and every rule about their values.

A parameter is a field made by `param(...)`: its type, range, help text, label and default (a fixed value, the
model family's, or derived from the model and the other parameters) live in its metadata, and the command line, the
manifest columns, the web app's fields and the "already rendered" hash are generated from it. `CommonParams` holds
what every family takes; a family or a task adds its own in a subclass (`t2v_fast.families.<family>.params`), which
may also derive defaults and check rules across fields in `derive`.

Two types, not one: a `ParamRequest` is what the user set (a name -> value mapping, nothing filled in); resolving it
for a model (`resolve`) gives the family's settings class with every default filled, or every problem at once.
`request_problems` holds the rules for a request's own values (prompt, negative prompt, seed, videos per prompt).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from t2v_fast.core.models import ModelCard

MAX_SEED = 2**63 - 1
DEFAULT_STEPS = 50
MIN_STEPS = 2
FAST_MODE = "fast mode (DeepCache)"


@dataclass(frozen=True)
class ParamProblem:
    """One violated rule. `fields` are the parameters involved, the one to blame first."""

    fields: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ParamInfo:
    """What one parameter is, for every surface that shows or checks it (command line, manifest, web app)."""

    name: str
    kind: type  # int, float, or str (one of `choices`)
    help: str
    label: str  # the web app's field label
    minimum: float | None = None
    exclusive: bool = False  # the minimum itself is refused
    size: bool = False  # a pixel size: a multiple of the model's latent pixel, at least two latent pixels
    family_default: bool = False  # the default is the model family's (`Family.defaults`)
    derived: str = ""  # how the default is derived when none is set, for help texts ("" when fixed)
    default: Any = None  # the fixed default, if any
    owner: str = ""  # the family or task whose parameter it is ("" for common ones), set by `param_infos`
    # A group of its own, listed after every family's parameters on every surface (so that adding one keeps the
    # positions of the others, e.g. the web API's inputs); "" for the plain ones.
    section: str = ""
    choices: tuple[str, ...] = ()  # the values a str parameter takes

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def default_text(self, by_family: str) -> str:
        """The default, in words, for help texts: `by_family` says a family default ("8 for Text2Video-Zero, ...")."""
        if self.family_default:
            return by_family
        if self.default is None:
            own = self.derived
        else:
            own = self.default if isinstance(self.default, str) else f"{self.default:g}"
        return f"{own}, {by_family}" if by_family else own  # `by_family`: a task's own default, if any

    def problems(self, value: Any, card: ModelCard) -> list[ParamProblem]:
        if self.kind is str:
            if value in self.choices:
                return []
            return [ParamProblem((self.name,), f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")]
        if self.kind is not int:
            return number_problems(self.name, value, self.minimum, self.exclusive)
        if not self.size:
            return integer_problems(self.name, value, minimum=int(self.minimum if self.minimum is not None else 0))
        found = integer_problems(self.name, value, minimum=card.min_size)
        if not found and value % card.size_multiple:
            found = [ParamProblem((self.name,), f"{self.name} must be a multiple of {card.size_multiple}, got {value}")]
        return found


def param(
    kind: type,
    help: str,
    label: str,
    *,
    default: Any = None,
    minimum: float | None = None,
    exclusive: bool = False,
    size: bool = False,
    family_default: bool = False,
    derived: str = "",
    section: str = "",
    choices: tuple[str, ...] = (),
) -> Any:
    """A parameter field; see `ParamInfo`. The dataclass default is the fixed default (None when it has none)."""
    info = ParamInfo(
        "",
        kind,
        help,
        label,
        minimum,
        exclusive,
        size,
        family_default,
        derived,
        default,
        section=section,
        choices=choices,
    )
    return field(default=default, metadata={"param": info})


Settings = TypeVar("Settings", bound="CommonParams")


@dataclass(frozen=True)
class CommonParams:
    """What every family takes. The resolved settings of one video: every field holds its value, none is unset."""

    frames: int = param(int, "frames per video", "Frames (video length)", minimum=1, family_default=True)
    steps: int = param(int, "denoising steps", "Steps", default=DEFAULT_STEPS, minimum=MIN_STEPS)
    guidance: float = param(
        float, "classifier-free guidance scale (<= 1: off)", "Guidance scale", minimum=0.0, family_default=True
    )
    height: int = param(
        int, "pixels, a multiple of the VAE's scale (8)", "Height", size=True, derived="the model's native size"
    )
    width: int = param(
        int, "pixels, a multiple of the VAE's scale (8)", "Width", size=True, derived="the model's native size"
    )
    fps: float = param(
        float, "frames per second of the MP4", "Frames per second", minimum=0.0, exclusive=True, family_default=True
    )
    # Fast mode (DeepCache, `t2v_fast.core.deepcache`); the defaults are the exact path.
    cache_interval: int = param(
        int,
        "fast mode (DeepCache): the whole UNet every N steps, only its shallow branch between (1: off, exact)",
        "Fast mode: cache interval (1 = exact)",
        default=1,
        minimum=1,
        section=FAST_MODE,
    )
    cache_branch: int = param(
        int,
        "fast mode: the skip branch whose deep features are reused (DeepCache's numbering; 0: the fastest)",
        "Fast mode: cache branch",
        default=0,
        minimum=0,
        section=FAST_MODE,
    )

    # Fields that are optional even once resolved (None has a meaning of its own, e.g. "no chunking").
    optional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def derive(cls, values: dict[str, Any], card: ModelCard, problems: list[ParamProblem]) -> list[ParamProblem]:
        """Fill the defaults derived from the model or from other fields into `values`, and check rules across
        fields; `problems` are those already found (a derivation skips what they make meaningless)."""
        values.setdefault("height", card.native_size)
        values.setdefault("width", card.native_size)
        branch = values["cache_branch"]  # always set: it has a fixed default
        said = any("cache_branch" in p.fields for p in problems)  # not an integer, or negative: said once
        if card.cache_branches and not said:  # 0: an engine folder's card from before fast mode
            return branch_problems(branch, card.cache_branches)
        return []

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def infos(cls) -> tuple[ParamInfo, ...]:
        return param_infos(cls)


def param_infos(settings: type[CommonParams], owner: str = "") -> tuple[ParamInfo, ...]:
    """The parameters of a settings class, in declaration order; those it adds to `CommonParams` get `owner`."""
    common = {f.name for f in fields(CommonParams)}
    return tuple(
        replace(f.metadata["param"], name=f.name, owner="" if f.name in common else owner) for f in fields(settings)
    )


@dataclass(frozen=True)
class ParamRequest:
    """What the user set, by parameter name; nothing is filled in. Build it from any surface with `from_values`."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **values: Any) -> ParamRequest:
        """The values given (None means "not set", as for an omitted command-line option)."""
        return cls({name: value for name, value in values.items() if value is not None})

    def merged(self, other: ParamRequest) -> ParamRequest:
        """These values over `other`'s (a manifest row's over the run's defaults)."""
        return ParamRequest({**other.values, **self.values})


def resolve(
    request: ParamRequest,
    card: ModelCard,
    settings: type[Settings],
    family_defaults: Mapping[str, Any],
    owners: Mapping[str, str],
    takers: str,
) -> tuple[Settings | None, list[ParamProblem]]:
    """The request resolved into `settings` for `card`, or None and every problem, in field order.

    `owners` names the family or task of every parameter some model takes, so that one this model does not take is
    refused saying whose it is, and who does not (`takers`: "ModelScope text-to-video models")."""
    infos = {info.name: info for info in param_infos(settings)}
    problems = []
    for name in request.values:
        if name in infos:
            continue
        if name in owners:
            article = "an" if owners[name][0] in "AEIOUaeiou" else "a"
            message = f"{name} is {article} {owners[name]} parameter; {takers} do not take it"
        else:
            message = f"unknown parameter {name!r}"
        problems.append(ParamProblem((name,), message))
    given = {name: value for name, value in request.values.items() if name in infos}
    values = {name: default_of(info, family_defaults) for name, info in infos.items()}
    values = {name: value for name, value in values.items() if value is not None} | given
    for name, info in infos.items():
        if name in values:
            problems += info.problems(values[name], card)
    problems += settings.derive(values, card, problems)
    if problems:
        return None, problems
    missing = [name for name in infos if values.get(name) is None and name not in settings.optional]
    if missing:
        raise AssertionError(f"{settings.__name__} left {missing} unresolved")
    coerced: dict[str, Any] = {
        name: float(v) if infos[name].kind is float and v is not None else v for name, v in values.items()
    }
    return settings(**coerced), []


def raise_problems(problems: Sequence[ParamProblem], where: str = "") -> None:
    """One `UserError` naming every problem (each once), prefixed by `where`; nothing when there are none."""
    if problems:
        raise UserError(where + "; ".join(dict.fromkeys(str(p) for p in problems)))


_NOT_GIVEN: Any = object()


def request_problems(
    *,
    prompt: Any = _NOT_GIVEN,
    negative_prompt: Any = _NOT_GIVEN,
    seed: Any = _NOT_GIVEN,
    videos_per_prompt: Any = _NOT_GIVEN,
) -> list[ParamProblem]:
    """Rules for a request's own values (those given): a prompt with text in it, a string negative prompt, a seed in
    [0, 2**63-1], at least one video per prompt."""
    problems = []
    if prompt is not _NOT_GIVEN:
        if not isinstance(prompt, str):
            problems.append(ParamProblem(("prompt",), f"prompt must be a string, got {type(prompt).__name__}"))
        elif not prompt.strip():
            problems.append(ParamProblem(("prompt",), "missing prompt"))
    if negative_prompt is not _NOT_GIVEN and not isinstance(negative_prompt, str):
        kind = type(negative_prompt).__name__
        problems.append(ParamProblem(("negative_prompt",), f"negative_prompt must be a string, got {kind}"))
    if seed is not _NOT_GIVEN:
        problems += integer_problems("seed", seed, minimum=0, maximum=MAX_SEED)
    if videos_per_prompt is not _NOT_GIVEN:
        problems += integer_problems("videos_per_prompt", videos_per_prompt, minimum=1)
    return problems


def integer_problems(
    name: str, value: Any, minimum: int, maximum: int | None = None, maximum_name: str | None = None
) -> list[ParamProblem]:
    if isinstance(value, bool) or not isinstance(value, int):
        return [ParamProblem((name,), f"{name} must be an integer, got {value!r}")]
    if maximum is not None and not minimum <= value <= maximum:
        bound = f"{maximum_name} = {maximum}" if maximum_name else str(maximum)
        return [ParamProblem((name,), f"{name} must be in [{minimum}, {bound}], got {value}")]
    if value < minimum:
        return [ParamProblem((name,), f"{name} must be >= {minimum}, got {value}")]
    return []


def branch_problems(branch: int, branches: int) -> list[ParamProblem]:
    """Fast mode's branch must be one of the UNet's (`t2v_fast.core.deepcache`)."""
    if 0 <= branch < branches:
        return []
    return [ParamProblem(("cache_branch",), f"cache_branch must be in [0, {branches - 1}] for this UNet, got {branch}")]


def number_problems(name: str, value: Any, minimum: float | None = None, exclusive: bool = False) -> list[ParamProblem]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [ParamProblem((name,), f"{name} must be a finite number, got {value!r}")]
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        return [ParamProblem((name,), f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value}")]
    return []


def default_of(info: ParamInfo, family_defaults: Mapping[str, Any]) -> Any:
    """A parameter's default when nothing derives it: the family's (or the task's, which may also override a fixed
    default, e.g. guided video's 20 steps), the fixed one, or None (derived)."""
    if info.family_default or info.name in family_defaults:
        return family_defaults.get(info.name)
    return info.default
