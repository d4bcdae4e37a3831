"""Where independent pieces of work run: this process, a pool of local processes, or Ray tasks.

One implementation for both kinds of split the tool makes: many models (`scan-many`) and one
model's labels (`NeuralCleanse(workers=...)`). Results come back to the calling process as they
finish, in whatever order; the caller alone writes files.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from neuralcleanse.errors import InputError

Done = Callable[[int, Any], None]


def run_calls(fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]], *, workers: int = 1, ray: Any = None,
              cpus_per_call: int = 1, on_done: Done | None = None,
              on_error: Callable[[int, BaseException], Any] | None = None) -> list[Any]:
    """fn(*args, **kwargs) for each (args, kwargs) in `calls`; returns the results in `calls` order.

    `ray`: a connected ray module (see `connect_ray`): each call is a Ray task of `cpus_per_call` CPUs. Otherwise
    `workers` > 1 runs them in that many spawned processes, and 1 in this process. `on_done(i,
    result)` is called as each finishes; `on_error(i, exc)` turns a call that raised (or whose
    worker died) into a result, and without it the error propagates."""
    results: list[Any] = [None] * len(calls)

    def finish(i: int, result: Any) -> None:
        results[i] = result
        if on_done is not None:
            on_done(i, result)

    def failed(i: int, exc: BaseException) -> None:
        if on_error is None:
            raise exc
        finish(i, on_error(i, exc))

    if ray is not None:
        _on_ray(ray, fn, calls, cpus_per_call, finish, failed)
    elif workers > 1 and len(calls) > 1:
        _in_pool(fn, calls, workers, finish, failed)
    else:  # no process to start, and no second copy of torch in memory
        for i, (args, kwargs) in enumerate(calls):
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failed(i, exc)
                continue
            finish(i, result)
    return results


def _in_pool(fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]], workers: int,
             finish: Done, failed: Callable[[int, BaseException], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child inherits torch's thread pools in whatever state they are in.
    pool = ProcessPoolExecutor(max_workers=min(workers, len(calls)), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(fn, *args, **kwargs): i for i, (args, kwargs) in enumerate(calls)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # raised in the worker, or the worker process died
                failed(i, exc)
                continue
            finish(i, result)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C or a failed part: drop the queue
        raise
    pool.shutdown()


def _on_ray(ray: Any, fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]], cpus: int, finish: Done,
            failed: Callable[[int, BaseException], None]) -> None:
    remote = ray.remote(num_cpus=cpus, max_retries=0)(fn)
    pending = {remote.remote(*args, **kwargs): i for i, (args, kwargs) in enumerate(calls)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # ray wraps the task's error, or reports the worker lost
                failed(i, exc)
                continue
            finish(i, result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def connect_ray(address: str) -> tuple[Any, bool]:
    """The ray module, connected to `address` ("auto", "HOST:PORT", or "local" for a Ray started in
    this process), and whether this call started the connection (and so must end it)."""
    try:
        import ray
    except ImportError:
        raise InputError("`ray` needs Ray, which is not installed: pip install 'ray>=2.52,<3' (or '.[ray]' in a checkout)") from None
    if ray.is_initialized():
        return ray, False
    try:
        if address == "local":  # a Ray of this machine's cores, started here and ended with the run
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().split(". ")[0].splitlines()
        raise InputError(f"cannot connect to Ray at {address!r}: {first[0] if first else type(exc).__name__}; "
                         "start the cluster first (`ray start --head`, docs/scale.md)") from None
    return ray, True
