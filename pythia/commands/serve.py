"""`python -m pythia serve`: the OpenAI HTTP API and a web chat over one model (the `serve` extra)."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from ..errors import ConfigError
from .kernel_choice import kernel_status, select_kernels
from .model_source import add_model_source, load_model
from .types import nonneg_int, positive_int

NAME = "serve"
SUMMARY = "serve a model over the OpenAI HTTP API, with a web chat"
DESCRIPTION = ("Serve --model over the OpenAI HTTP API (/v1/models, /v1/chat/completions, /v1/completions; "
               "streaming and logprobs) so the openai client, editors and chat front-ends work unchanged, and "
               "a web chat at / that shades each reply token by its probability. Requests that arrive together "
               "are decoded together, one batched forward pass per token. It binds 127.0.0.1 unless --host "
               "says otherwise; SIGTERM or Ctrl-C stops accepting, ends the replies in flight with a final "
               "event and exits 0. Needs the serve extra: pip install 'pythia-gpt[serve]'.")
EPILOG = """\
examples:
  python -m pythia serve --model ./smollm2                (then open http://127.0.0.1:8000/)
  python -m pythia serve --model pythia-chat.npz --port 8080 --api-key s3cret
  python -m pythia serve --model ./smollm2 --host 0.0.0.0 --api-key s3cret --max-batch 16"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p, chat_format=True, quantize=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 (default: no key)")
    p.add_argument("--name", metavar="ID", default=None,
                   help="the model id clients send (default: the model's file or folder name)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="most sequences decoded together; more requests wait")
    p.add_argument("--max-queue", type=nonneg_int, default=64, metavar="N",
                   help="most requests waiting for a slot; beyond, 503 with Retry-After")
    p.add_argument("--quiet", action="store_true", help="no log line per request")
    from .kernel_choice import add_kernel_flag
    add_kernel_flag(p)


def model_id(src: str) -> str:
    """The id a model is served under: its file name without .npz, or its folder's name."""
    path = Path(src).resolve()
    return path.stem if path.suffix == ".npz" else path.name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not left 0: the connections accepted inherit it, and asyncio turns
        # Nagle's algorithm off (TCP_NODELAY) only on sockets that say they are TCP. With it on,
        # a response written in two pieces (headers, then body) waited for the client's delayed
        # ACK, about 40 ms a request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                          f"(0 picks a free one) or --host") from None
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ConfigError(f"serve needs the serve extra ({e.name} is not installed); "
                          f"pip install 'pythia-gpt[serve]' (Starlette and uvicorn)") from None
    from ..serve.app import Settings, create_app
    from ..serve.batch import BatchDecoder
    from ..ui import ConsoleUI
    err = ConsoleUI(sys.stderr)
    select_kernels(args.kernels)
    m = load_model(args)
    name = args.name or model_id(args.model or args.checkpoint or args.gpt2)
    if not _is_loopback(args.host) and not args.api_key:
        err.warn(f"listening on {args.host} without --api-key: anyone who can reach this machine can use the model")
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    decoder = BatchDecoder(m.model, max_batch=args.max_batch, max_queue=args.max_queue)
    app = create_app(m, Settings(name, api_key=args.api_key, quiet=args.quiet), decoder)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = _Server(config, decoder)
    backend, _ = kernel_status(args.kernels)
    shown = f"[{host}]" if ":" in host else host
    err.notice(f"pythia: serving {m.description} as {name!r}{err.dot}kernels {backend}")
    err.notice(f"pythia: listening on http://{shown}:{port}/ (the web chat; the API under /v1); Ctrl-C stops")
    server.run(sockets=[sock])
    err.notice("pythia: server stopped")
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose stop signal first ends the replies in flight (each gets its final
        event at the decoder's next step) and which exits normally afterwards instead of raising
        the signal again."""

        def __init__(self, config, decoder):
            super().__init__(config)
            self.decoder = decoder

        def handle_exit(self, sig, frame) -> None:
            self.decoder.request_close()
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server


def _Server(config, decoder):
    return _server_class()(config, decoder)
