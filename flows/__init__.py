"""Prefect flows for nightly bulk generation: thin orchestration over `t2v_fast.manifest` and `t2v_fast.batch`."""
