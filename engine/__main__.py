"""The engine process: `python -m engine --models JSON --device D --blobs DIR`.

It reads protocol messages from standard input, one JSON line each, and writes its own to
standard output. Everything else that would print (libraries included) goes to standard error,
so the message stream stays clean.

With `--worker` it is a remote worker (`canvas worker`) instead: messages come and go through
the Redis that CANVAS_WORKER_REDIS_URL names (engine/transport/redis_worker.py), and its blobs
live in a folder of its own (a temporary one unless --blobs is given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine import protocol


def _claim_stdout():
    """Keep the real standard output for messages and point fd 1 at standard error."""
    messages = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(message: protocol.FromEngine) -> None:
        with lock:
            messages.write(protocol.encode(message))

    return send


LOADING_HEARTBEAT = float(os.environ.get("CANVAS_LOADING_HEARTBEAT", "10"))


def _say_loading(send, loaded: threading.Event) -> None:
    """Tell the bot, while the model loads (or downloads), that the engine is alive."""
    began = time.monotonic()
    while not loaded.wait(LOADING_HEARTBEAT):
        send(protocol.Loading(round(time.monotonic() - began, 1)))


def _read_stdin(inbox: queue.Queue) -> None:
    for line in sys.stdin.buffer:
        if line.strip():
            inbox.put(protocol.decode(line))
    inbox.put(protocol.Shutdown())  # the bot is gone: stop rather than run orphaned


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m engine")
    parser.add_argument("--model", default="bundled:shapes",
                        help="the one model's source, when --models is not given")
    parser.add_argument("--models", type=json.loads, default=None,
                        help="the named models, as a JSON list of protocol.ModelSpec fields; "
                             "the first is the default")
    parser.add_argument("--memory", type=float, default=0,
                        help="GB of device memory for models; 0: what is free, less headroom")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="most images in one batch; 0: sized to the device's memory")
    parser.add_argument("--blobs", type=Path, default=None,
                        help="the blob store's folder: pictures in, pictures and LoRAs out "
                             "(needed, but for a worker: a temporary folder)")
    parser.add_argument("--worker", action="store_true",
                        help="serve as a remote worker through the Redis that "
                             "CANVAS_WORKER_REDIS_URL names (redis://...)")
    parser.add_argument("--name", default="", help="the worker's name (default: host name)")
    parser.add_argument("--lease", type=float, default=10.0,
                        help="seconds a worker's jobs stay its own without a heartbeat")
    parser.add_argument("--upscaler", default="",
                        help="an upscaling model for /upscale: an ESRGAN-family file (spandrel) "
                             "or an SD x4 upscaler's folder or hub id; none: a hires fix")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and the VAE decoder, warmed up at start")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0: one less than the machine's cores")
    args = parser.parse_args()
    redis_url = os.environ.get("CANVAS_WORKER_REDIS_URL", "")
    if args.worker and not redis_url:
        parser.error("--worker needs CANVAS_WORKER_REDIS_URL")
    if args.blobs is None and not args.worker:
        parser.error("--blobs is needed (but for a worker)")

    link = None
    if args.worker:
        from engine.blobs import LocalBlobs
        from engine.transport.redis_worker import RedisLink, default_name

        if args.blobs is None:
            args.blobs = Path(tempfile.mkdtemp(prefix="canvas-worker-"))
        link = RedisLink(redis_url, args.name or default_name(), args.device,
                         LocalBlobs(args.blobs), args.lease)
        send = link.send
    else:
        send = _claim_stdout()
    loaded = threading.Event()
    threading.Thread(target=_say_loading, args=(send, loaded), daemon=True,
                     name="loading").start()
    logging.basicConfig(level=os.environ.get("CANVAS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s engine %(levelname)s %(name)s: %(message)s")
    # Library chatter (deprecations, optional extras, torchao's kernels for other hardware)
    # is noise in a bot's log.
    for chatty in ("torchao", "torch.utils._pytree"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    # Heavy imports only here, in the engine process.
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from engine.batch_size import choose as choose_batch
    from engine.blobs import LocalBlobs
    from engine.models import Models, load_spec
    from engine.worker import Engine

    # Leave a core to the bot process: with every core busy, OpenMP threads spin against it
    # and a small model runs tens of times slower.
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    specs = ([protocol.ModelSpec(**spec) for spec in args.models] if args.models
             else [protocol.ModelSpec(args.model, args.model)])
    models = Models(specs, lambda spec: load_spec(spec, args.device, args.compile),
                    int(args.memory * 1e9))
    try:
        pipelines = models.get(models.default)
        max_batch = choose_batch(pipelines, args.max_batch)
    except Exception as error:
        logging.getLogger("engine").exception("could not load %s", specs[0].source)
        send(protocol.Fatal(f"Could not load the model {specs[0].name}: {error}"))
        sys.exit(1)
    inbox: queue.Queue = queue.Queue()
    if link is not None:
        link.start(inbox)

        def stop(signum, frame) -> None:
            inbox.put(protocol.Shutdown())

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    else:
        threading.Thread(target=_read_stdin, args=(inbox,), daemon=True, name="stdin").start()
    engine = Engine(models, LocalBlobs(args.blobs), max_batch, send, inbox, args.upscaler)
    loaded.set()
    send(protocol.Ready(models.default, engine.version, str(pipelines.device),
                        str(pipelines.dtype).removeprefix("torch."),
                        pipelines.settings.min_output_size, max_batch,
                        pipelines.family.label, tuple(pipelines.family.option_notes()),
                        tuple(models.specs)))
    for record in models.loads:  # the default's load, told after Ready like every later one
        send(record)
    engine.run()
    if link is not None:
        link.stop()
    # Exit at once: a daemon thread blocked reading standard input can otherwise abort the
    # interpreter's shutdown (exit code -6); every message is written already (unbuffered).
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
