"""Serving speed and load: tokens/s through `pythia serve`'s HTTP API, and a soak with disconnects.

    python benchmarks/bench_serve.py                  # both cases; --case M, --rounds 5, --quick
    python benchmarks/bench_serve.py --soak 300 --clients 16 --max-batch 4 --max-queue 4
    python benchmarks/bench_serve.py --batch-steps --case gpt2-small

Each case builds a random-weight model (speed does not depend on the weights) and serves it from a
child process (this script with --child: create_app, the BatchDecoder and uvicorn, as `pythia
serve` runs them), so the clients, httpx threads in this process, do not share the server's
interpreter. All requests are greedy streaming /v1/completions from a prompt of token ids.
Interleaved rounds (the first one dropped as a warm-up), medians with the range:

    single       one client: new tokens / wall time, against model.generate in this process on the
                 same prompt (the goal: >= 0.9x; the difference is HTTP, JSON and the event loop),
                 and the CPU time a token costs in each (the server's from /proc/PID/stat), whose
                 difference is the API's own cost per token; for config M also split into the
                 cost of a request (1-token requests) and of each further token
    N clients    N = 1, 2, 4, 8 clients at once, each asking for the same number of tokens
                 (config M: 10 requests one after another, each client on its own connection):
                 aggregate tokens/s = all new tokens / wall time, and the time to first token
                 (p50, p95 over every round) (the goal: 8 clients >= 4x one client's aggregate)

Cases: gpt2-small (12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024; prompt 16
tokens, 32 new per client) and M (config M: block 64, d_model 128, 4 layers; prompt 8, 48 new).

--soak SECONDS: `--clients` clients loop for that long against the config M server, each request
one of: a stream read to [DONE], a stream closed after a random number of events (the client goes
away mid-reply), or a whole (non-streaming) reply; random length, temperature and logprobs. With
--max-batch and --max-queue small enough, some requests get 503 with Retry-After (then the
client waits 50-300 ms). Every response is counted by kind and status; anything other than 200
or a 503 carrying Retry-After (another status, a broken stream, a reply without [DONE], an
exception) is an error and fails the soak; a stream the client closed before its end is counted
as "200 closed mid-reply" (one that ended before the client meant to close it, as 200). The
server's resident memory (VmRSS of the child) is read after the warm-up, every 30 s and at the
end; once the clients stop, /health must report 0 sequences decoding and 0 waiting (no slot
leaked). --batch-steps times the model's own decode step over 1, 2, 4 and 8 rows (no server):
the bound on what batching can give. Needs the serve extra and httpx.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from pythia import Pythia, PythiaConfig  # noqa: E402
from pythia.formats.source import LoadedModel  # noqa: E402

CASES = {"gpt2-small": (dict(vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12), 16, 32),
         "M": (dict(vocab_size=65, block_size=64, d_model=128, n_layer=4, n_head=4), 8, 48)}
REPEAT = {"gpt2-small": 1, "M": 10}   # single-stream requests (or generate calls) per round, one after another
CLIENTS = (1, 2, 4, 8)


class IdTokenizer:
    """Token i is the character U+10000 + i (a valid code point for every id of GPT-2's vocabulary)."""
    kind = "bench"

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x10000 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(0x10000 + int(i)) for i in ids)


def build(name: str) -> tuple[Pythia, list[int], int]:
    """(model, prompt ids, new tokens per request) of a case; the same in the child and here."""
    cfg, n_prompt, n_new = CASES[name]
    model = Pythia(PythiaConfig(**cfg), seed=0)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, cfg["vocab_size"], n_prompt)]
    return model, prompt, n_new


def child(name: str, max_batch: int, max_queue: int, interval: float | None) -> None:
    """Serve a case on a free local port until SIGTERM; the port is the first line on stdout."""
    import uvicorn

    from pythia.serve.app import Settings, create_app
    from pythia.serve.batch import BatchDecoder
    model = build(name)[0]
    extra = {} if interval is None else {"stream_interval": interval}
    app = create_app(LoadedModel(model, IdTokenizer(), name), Settings("bench", quiet=True, **extra),
                     BatchDecoder(model, max_batch=max_batch, max_queue=max_queue))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)   # as `pythia serve`: TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])


class Server:
    """A child process serving one case."""

    def __init__(self, name: str, max_batch: int = 8, max_queue: int = 64, interval: float | None = None):
        args = [] if interval is None else ["--stream-interval", str(interval)]
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--max-batch", str(max_batch),
                                      "--max-queue", str(max_queue), *args], stdout=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        self.health(timeout=120)

    def health(self, timeout: float = 10) -> dict:
        import httpx
        t0 = time.monotonic()
        while True:
            try:
                return httpx.get(self.url + "/health", timeout=5).json()
            except httpx.HTTPError:
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.1)

    def rss_mb(self) -> float:
        """The child's resident memory now (VmRSS of /proc/PID/status), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def cpu_s(self) -> float:
        """CPU seconds the child has used so far (user + system, /proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_clients = threading.local()


def stream(url: str, prompt: list[int], n: int) -> tuple[int, float, float]:
    """(new tokens, seconds to the first, seconds in all) of one streaming greedy completion, on
    this thread's own keep-alive connection (as a client that asks more than once keeps one)."""
    import httpx
    c = getattr(_clients, "c", None)
    if c is None:
        c = _clients.c = httpx.Client(timeout=600)
    t0 = time.perf_counter()
    first, tokens = None, 0
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with c.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first or 0.0, time.perf_counter() - t0


def in_process(model, prompt: list[int], n: int, repeat: int) -> tuple[float, float]:
    """(tokens/s, CPU microseconds a token) of model.generate (what `pythia generate` runs),
    greedy, in this process, repeat times one after another."""
    t0, c0 = time.perf_counter(), time.process_time()
    got = sum(len(list(model.generate(prompt, n, temperature=0))) for _ in range(repeat))
    return got / (time.perf_counter() - t0), (time.process_time() - c0) / got * 1e6


def single(server: "Server", prompt: list[int], n: int, repeat: int) -> tuple[float, float]:
    """(tokens/s, the server's CPU microseconds a token) of one client streaming repeat requests
    one after another."""
    c0, t0 = server.cpu_s(), time.perf_counter()
    got = sum(stream(server.url, prompt, n)[0] for _ in range(repeat))
    return got / (time.perf_counter() - t0), (server.cpu_s() - c0) / got * 1e6


def split_cpu(server: "Server", model, prompt: list[int], n: int, repeat: int) -> tuple[float, float, float, float]:
    """CPU milliseconds of a request and microseconds of each further token, in the server and in
    this process (generate): from requests of 1 token and of n tokens, repeat * 4 of each (the
    server's clock ticks every 10 ms)."""
    def server_ms(k: int) -> float:
        c0 = server.cpu_s()
        for _ in range(4 * repeat):
            stream(server.url, prompt, k)
        return (server.cpu_s() - c0) / (4 * repeat) * 1e3

    def local_ms(k: int) -> float:
        c0 = time.process_time()
        for _ in range(4 * repeat):
            list(model.generate(prompt, k, temperature=0))
        return (time.process_time() - c0) / (4 * repeat) * 1e3
    s1, sn, l1, ln = server_ms(1), server_ms(n), local_ms(1), local_ms(n)
    return s1, (sn - s1) / (n - 1) * 1e3, l1, (ln - l1) / (n - 1) * 1e3


def med(xs) -> str:
    return f"{np.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def run_case(name: str, rounds: int, quick: bool, interval: float | None) -> None:
    model, prompt, n_new = build(name)
    if quick:
        n_new = 8
    server = Server(name, max_batch=max(CLIENTS), interval=interval)
    pool = concurrent.futures.ThreadPoolExecutor(max(CLIENTS))       # its threads keep their connections

    def client(_) -> list[tuple[int, float, float]]:
        return [stream(server.url, prompt, n_new) for _ in range(REPEAT[name])]
    try:
        local, api, cpu_local, cpu_api, agg, ttft, split = [], [], [], [], {n: [] for n in CLIENTS}, [], []
        for r in range(rounds + 1):                                     # round 0: the warm-up, dropped
            lt, lc = in_process(model, prompt, n_new, REPEAT[name])
            at, ac = single(server, prompt, n_new, REPEAT[name])
            sp = split_cpu(server, model, prompt, n_new, REPEAT[name]) if REPEAT[name] > 1 else None
            row = {}
            for n in CLIENTS:
                t0 = time.perf_counter()
                runs = [x for runs in pool.map(client, range(n)) for x in runs]
                row[n] = (sum(x[0] for x in runs) / (time.perf_counter() - t0), [x[1] for x in runs])
            if r == 0:
                continue
            local.append(lt)
            api.append(at)
            cpu_local.append(lc)
            cpu_api.append(ac)
            if sp:
                split.append(sp)
            for n in CLIENTS:
                agg[n].append(row[n][0])
            ttft += row[CLIENTS[-1]][1]
        ratios = [a / b for a, b in zip(api, local)]
        print(f"{name}: single stream {med(api)} tokens/s through the API, {med(local)} in-process: "
              f"{np.median(api) / np.median(local):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})")
        print(f"{name}: CPU per token: {med(cpu_api)} us in the server, {med(cpu_local)} us in-process "
              f"(the API's own: {np.median(cpu_api) - np.median(cpu_local):.0f} us)")
        if split:
            s1, st, l1, lt = (list(x) for x in zip(*split))
            print(f"{name}: CPU of a request (prompt, first token, HTTP): {med(s1)} ms in the server, {med(l1)} ms "
                  f"in-process; of each further token: {med(st)} us in the server, {med(lt)} us in-process")
        base = np.median(agg[1])
        for n in CLIENTS:
            print(f"{name}: {n} clients {med(agg[n])} tokens/s aggregate ({np.median(agg[n]) / base:.2f}x one client)")
        t = np.array(ttft) * 1000
        print(f"{name}: time to first token under {CLIENTS[-1]} clients p50 {np.percentile(t, 50):.0f} ms, "
              f"p95 {np.percentile(t, 95):.0f} ms; widest batch {server.health()['widest_batch']}")
    finally:
        pool.shutdown()
        server.stop()


def batch_steps(name: str) -> None:
    """What a decode step over B one-token rows costs the model itself (no server): the bound on
    what batching can give, and the widest block matrix's and the head's products alone."""
    from pythia.system import threads
    model, prompt, _ = build(name)
    per = threads.widest_per_token(model)
    for B in CLIENTS:
        caches = [model.new_kv_cache() for _ in range(B)]
        with threads.for_pass(per * B * len(prompt)):
            model.forward_cached_batch([np.array(prompt)] * B, caches)
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            with threads.for_pass(per * B):
                model.forward_cached_batch([np.array([1])] * B, caches)
            times.append(time.perf_counter() - t0)
        print(f"{name}: a step over {B} rows {np.median(times) * 1e3:.1f} ms median "
              f"({B / np.median(times):.0f} tokens/s)")
    # the widest block matrix and the tied head, through BLAS and through the few-row kernels
    # decoding uses (pythia.layers: kernels.vecmat for (in, out), kernels.matvec for (out, in)),
    # interleaved, 1 BLAS thread as a decode step's rule sets
    from pythia import layers
    w = model.params["h.0.mlp.c_fc.weight"]                             # (C, 4C), (in, out)
    wte = model.params["wte"]                                           # (V, C), (out, in)
    cases = [(f"({{B}}, {w.shape[0]}) @ {w.shape}", lambda x: x @ w, lambda x: layers.linear_forward(x, w)),
             (f"({{B}}, {wte.shape[1]}) @ wte.T {wte.shape[::-1]}", lambda x: x @ wte.T,
              lambda x: layers.linear_out_in(x, wte))]
    for label, blas, ours in cases:
        for B in (1, 2, 4, 8):
            x = np.random.default_rng(0).standard_normal((B, w.shape[0])).astype(np.float32)
            times = {"BLAS": [], "Pythia": []}
            for _ in range(15):
                for key, fn in (("BLAS", blas), ("Pythia", ours)):
                    t0 = time.perf_counter()
                    with threads.for_pass(per * B):
                        fn(x)
                    times[key].append(time.perf_counter() - t0)
            b, p = (np.median(times[k][1:]) * 1e3 for k in ("BLAS", "Pythia"))
            print(f"{name}: {label.format(B=B)}: BLAS {b:.3f} ms, Pythia's {p:.3f} ms ({b / p:.2f}x)")


# ---- the soak -----------------------------------------------------------------------------------

def soak_client(url: str, stop_at: float, seed: int, counts: collections.Counter, errors: list) -> None:
    """Requests in a loop until stop_at; each counted as (kind, status) or recorded as an error."""
    import httpx
    rng = random.Random(seed)
    V, block = CASES["M"][0]["vocab_size"], CASES["M"][0]["block_size"]
    with httpx.Client(timeout=60) as c:
        while time.monotonic() < stop_at:
            kind = rng.choice(("stream", "cut", "whole"))
            n = rng.randint(1, block - 16)
            body = {"prompt": [rng.randrange(V) for _ in range(rng.randint(1, 16))], "max_tokens": n,
                    "temperature": rng.choice((0, 0.8)), "seed": rng.randrange(1000), "stream": kind != "whole"}
            if rng.random() < 0.5:
                body["logprobs"] = 2
            try:
                status, problem = _soak_request(c, url, body, kind, rng)
            except Exception as e:                                   # a refused connection, a timeout, ...
                status, problem = "exception", f"{type(e).__name__}: {e}"
            counts[(kind, status)] += 1
            if problem:
                errors.append(f"{kind} {status}: {problem}")
            if status == 503:
                time.sleep(rng.uniform(0.05, 0.3))              # Retry-After says 1 s; these clients push harder


def _soak_request(c, url: str, body: dict, kind: str, rng: random.Random) -> tuple[object, str | None]:
    """(status, what was wrong or None) of one request."""
    if kind == "whole":
        r = c.post(url + "/v1/completions", json=body)
        if r.status_code == 200:
            choice = r.json()["choices"][0]
            used = r.json()["usage"]["completion_tokens"]
            ok = choice["finish_reason"] in ("stop", "length") and used <= body["max_tokens"]
            return 200, None if ok else f"a malformed reply {r.text[:200]}"
        return r.status_code, _refusal(r)
    with c.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, _refusal(r)
        cut_after = rng.randint(1, 3) if kind == "cut" else None      # events (a chunk holds a few tokens)
        events, done, finish = 0, False, None
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return 200, f"an error event {chunk['error']}"
            finish = chunk["choices"][0]["finish_reason"] or finish
            events += 1
            if cut_after is not None and events >= cut_after:
                return "200 closed mid-reply", None                  # leaving the block closes the connection
        if not done or finish not in ("stop", "length"):
            return 200, f"the stream ended without {'[DONE]' if not done else 'a finish_reason'}"
        return 200, None


def _refusal(r) -> str | None:
    """None for the intended refusal, 503 with Retry-After; else what is wrong."""
    if r.status_code == 503 and r.headers.get("retry-after"):
        return None
    return f"status {r.status_code} {r.text[:200]}"


def soak(seconds: float, clients: int, max_batch: int, max_queue: int) -> bool:
    import httpx
    server = Server("M", max_batch=max_batch, max_queue=max_queue)
    try:
        for _ in range(3):                                           # warm-up
            httpx.post(server.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 40}, timeout=60)
        rss = [(0, server.rss_mb())]
        counts: collections.Counter = collections.Counter()
        errors: list[str] = []
        print(f"soak: {clients} clients for {seconds:g} s, max_batch {max_batch}, max_queue {max_queue}, "
              f"load average {os.getloadavg()[0]:.2f}; server RSS after warm-up {rss[0][1]:.1f} MB", flush=True)
        t0 = time.monotonic()
        stop_at = t0 + seconds
        threads = [threading.Thread(target=soak_client, args=(server.url, stop_at, i, counts, errors))
                   for i in range(clients)]
        for t in threads:
            t.start()
        while time.monotonic() < stop_at:
            time.sleep(min(30, max(0.0, stop_at - time.monotonic())))
            rss.append((time.monotonic() - t0, server.rss_mb()))
        for t in threads:
            t.join(120)
        ended = time.monotonic()
        health = server.health()
        while (health["active"] or health["waiting"]) and time.monotonic() - ended < 10:
            time.sleep(0.1)
            health = server.health()
        free_after = time.monotonic() - ended
        rss.append((time.monotonic() - t0, server.rss_mb()))
        total = sum(counts.values())
        print(f"soak: {total} requests, {total / seconds:.1f}/s; load average {os.getloadavg()[0]:.2f}")
        for kind in ("stream", "cut", "whole"):
            by = {s: v for (k, s), v in sorted(counts.items(), key=str) if k == kind}
            print(f"soak: {kind:6s} " + ", ".join(f"{s}: {v}" for s, v in by.items()))
        print("soak: server RSS MB " + ", ".join(f"{t:.0f}s {m:.1f}" for t, m in rss)
              + f" (end - start {rss[-1][1] - rss[0][1]:+.1f} MB)")
        print(f"soak: after the clients stopped: {health['active']} decoding, {health['waiting']} waiting "
              f"(checked {free_after:.1f} s after); {health['steps']} decode steps, "
              f"widest batch {health['widest_batch']}")
        for e in errors[:10]:
            print(f"soak: error: {e}")
        ok = not errors and health["active"] == 0 and health["waiting"] == 0
        print(f"soak: {'PASS' if ok else 'FAIL'}: {len(errors)} error(s)")
        return ok
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up (default 3)")
    p.add_argument("--quick", action="store_true", help="8 new tokens per client, one round: a smoke run")
    p.add_argument("--soak", type=float, metavar="SECONDS", help="run the soak instead of the speed cases")
    p.add_argument("--clients", type=int, default=16, help="soak clients (default 16)")
    p.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (default 64)")
    p.add_argument("--batch-steps", action="store_true",
                   help="time the model's decode step over 1, 2, 4 and 8 rows in this process (no server)")
    p.add_argument("--stream-interval", type=float, metavar="SECONDS",
                   help="the server's chunk interval (default: the server's own, 2 ms; 0: a chunk per token)")
    p.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.max_batch, args.max_queue, args.stream_interval)
    if args.batch_steps:
        for name in args.case or ["M", "gpt2-small"]:
            batch_steps(name)
        return
    if args.soak:
        sys.exit(0 if soak(args.soak, args.clients, args.max_batch, args.max_queue) else 1)
    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    for name in args.case or ["M", "gpt2-small"]:
        run_case(name, 1 if args.quick else args.rounds, args.quick, args.stream_interval)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
