"""Prefect flows for nightly bulk generation: thin orchestration over `t2v_fast.bulk`."""
