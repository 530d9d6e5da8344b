"""Keep library chatter (weight-loading bars, dtype notes, deprecation notices) out of our programs' output."""

import warnings


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # The reference pipeline's own warnings, when benchmarks and tests run it.
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
    warnings.filterwarnings("ignore", message="Default grid_sample", category=UserWarning)
