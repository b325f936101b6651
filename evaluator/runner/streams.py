"""Serving requests that stream from an engine on threads of their own (llama.cpp's server over
HTTP, TensorRT-LLM's generate_async): each request's thread reads its stream and stamps every
token with the runner's clock the moment it arrives; step() hands what arrived to the schedule
(serve.run_schedule) with those stamps, so draining the queue never enters a latency."""
import queue
import threading
import time

WAIT_S = 0.05  # the longest step() waits for a token when no arrival is due sooner


class Streams:
    def __init__(self, engine_name: str, workers: int | None = None):
        """workers: read at most that many requests at once, the rest waiting their turn in order
        (a server that takes that many connections at a time queues the others the same way),
        instead of a thread for every request: hundreds of Python threads at a heavy rate took the
        CPU the engine needed."""
        self.engine_name = engine_name
        self.made = queue.Queue()  # (rid, tokens, their ns) or (rid, None, error text)
        self.waiting = queue.Queue() if workers else None  # (rid, read) in arrival order
        for _ in range(workers or 0):
            threading.Thread(target=self._work, daemon=True).start()

    def start(self, rid: int, read) -> None:
        """Run read(emit), on a thread: it calls emit(tokens) as each part of request rid's answer
        arrives, and returns when the request is done."""
        if self.waiting is not None:
            self.waiting.put((rid, read))
        else:
            threading.Thread(target=self._read, args=(rid, read), daemon=True).start()

    def _work(self) -> None:
        while True:
            self._read(*self.waiting.get())

    def _read(self, rid: int, read) -> None:
        try:
            read(lambda tokens: self.made.put((rid, list(tokens), [time.perf_counter_ns()] * len(tokens))))
        except Exception as exc:  # noqa: BLE001  raised in the runner's thread by step()
            self.made.put((rid, None, f"{self.engine_name}, request {rid}: {type(exc).__name__}: {exc}"))

    def step(self, wait_s: float | None, alive=lambda: None) -> list[tuple[int, list[int], list[int]]]:
        """Every token that arrived since the last step, with its time; waits for the first at most
        until the next arrival is due. alive() raises if the engine behind the streams has died."""
        wait = WAIT_S if wait_s is None else min(WAIT_S, max(0.0, wait_s))
        try:
            item = self.made.get(timeout=wait)
        except queue.Empty:
            alive()
            return []
        made = {}
        while item is not None:
            rid, tokens, stamps = item
            if tokens is None:
                raise RuntimeError(stamps)
            got, ns = made.setdefault(rid, ([], []))
            got += tokens
            ns += stamps
            try:
                item = self.made.get_nowait()
            except queue.Empty:
                item = None
        return [(rid, tokens, ns) for rid, (tokens, ns) in made.items()]
