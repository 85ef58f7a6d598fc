"""The console adapter: one chat command per line on standard input, replies on standard output.

The console user is an admin. Attachments are local paths given with `--image PATH` and
`--mask PATH` (quote a path with spaces). With `json_mode`, every reply is one JSON object on
its own line. At end of input it waits for the jobs it started, then returns.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from bot import commands as cmd
from bot.service import OPERATOR_PLATFORM, Attachment, Reply, Service, User
from bot.store import ImageRow, JobRow

PLATFORM = OPERATOR_PLATFORM
USER = User(PLATFORM, "console", "console")
ATTACHMENT = re.compile(r'(?:^|\s)--(image|mask)(?:\s+|=)("[^"]*"|\S+)')


class AttachmentError(ValueError):
    pass


def split_attachments(line: str) -> tuple[str, dict[str, Attachment]]:
    """Take `--image PATH` / `--mask PATH` out of a command line and read those files."""
    found: dict[str, Attachment] = {}

    def take(match: re.Match) -> str:
        kind, path = match.group(1), Path(match.group(2).strip('"')).expanduser()
        if kind in found:
            raise AttachmentError(f"--{kind} was given twice; please give it once.")
        try:
            found[kind] = Attachment(path.read_bytes(), path.name)
        except OSError as error:
            raise AttachmentError(f"Cannot read the {kind} {str(path)!r}: "
                                  f"{error.strerror or error}.") from None
        return " "

    text = ATTACHMENT.sub(take, line)
    return text, found


class ConsoleAdapter:
    def __init__(self, service: Service, *, json_mode: bool = False,
                 stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.service = service
        self.json_mode = json_mode
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.waiting: set[int] = set()
        self.all_delivered = asyncio.Event()
        self.all_delivered.set()
        self.bars: dict[int, tqdm] = {}
        service.register(PLATFORM, self)

    async def run(self) -> None:
        """Serve commands until end of input, then wait for the jobs started here."""
        if not self.json_mode:
            ready = self.service.engines.ready
            where = f" ({ready.device})" if ready else ""
            print(f"Magic Canvas on {self.service.checkpoint}{where}. Type a command such as "
                  "/imagine a red circle, or /help.", file=self.stdout, flush=True)
            if self.service.web_running:
                print(f"The web gallery is at {self.service.settings.web.base_url} "
                      "(type /web for your sign-in link).", file=self.stdout, flush=True)
        lines = self._lines()
        while (line := await lines.get()) is not None:
            if line.strip():
                await self.command(line.strip())
        await self.all_delivered.wait()
        await self.service.drained(PLATFORM)  # jobs taken up from a run that was killed
        await self.service.learning.idle()  # a /retrain typed here finishes before we exit

    def _lines(self) -> asyncio.Queue[str | None]:
        """Standard input, line by line, then None. Read by a daemon thread: a thread of
        asyncio's own pool would hold up a stop (Ctrl-C, SIGTERM) until the next line came."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            try:
                for line in iter(self.stdin.readline, ""):
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, None)
            except RuntimeError:
                pass  # the bot stopped (its loop is closed) while input was still coming

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return lines

    async def command(self, line: str) -> None:
        try:
            text, attachments = split_attachments(line)
            limit = self.service.settings.limits.max_prompt_chars
            request = cmd.parse(text, max_prompt_chars=limit)
        except (AttachmentError, cmd.CommandError) as error:
            self.emit_error(str(error))
            return
        reply = await self.service.handle(USER, request, image=attachments.get("image"),
                                          mask=attachments.get("mask"))
        self.emit_reply(reply)

    # ---- output --------------------------------------------------------------------------

    def emit_reply(self, reply: Reply) -> None:
        if reply.queued:
            self.waiting.add(reply.job_id)
            self.all_delivered.clear()
        if reply.error:
            self.emit_error(reply.text)
        else:
            self.emit({"type": "text", "text": reply.text, "job": reply.job_id,
                       "link": reply.link}, reply.text)

    def emit_error(self, text: str, job_id: int | None = None) -> None:
        self.emit({"type": "error", "error": text, "job": job_id}, text)

    def emit(self, record: dict[str, Any], text: str) -> None:
        if self.json_mode:
            line = json.dumps({k: v for k, v in record.items() if v is not None},
                              ensure_ascii=False)
        else:
            line = text
        print(line, file=self.stdout, flush=True)

    # ---- the Deliverer the service calls -------------------------------------------------

    async def progress(self, job: JobRow, step: int, total: int) -> None:
        if self.json_mode:
            self.emit({"type": "progress", "job": job.id, "step": step, "total": total}, "")
            return
        bar = self.bars.get(job.id)
        if bar is None:
            bar = self.bars[job.id] = tqdm(total=total, desc=f"job #{job.id}", unit="step",
                                           leave=False, file=sys.stderr)
        bar.update(step - bar.n)

    async def deliver_images(self, job: JobRow, images: list[ImageRow]) -> None:
        self.close_bar(job.id)
        for image in images:
            path = str(self.service.image_file(image))
            self.emit(
                {"type": "image", "job": job.id, "image": image.id, "path": path,
                 "seed": image.seed, "width": image.width, "height": image.height,
                 "prompt": job.prompt,
                 "model": (job.resolved or job.params).checkpoint or self.service.checkpoint,
                 "model_version": image.version,
                 **({"words": job.params.words, "style": job.params.style}
                    if job.params.words is not None else {}),
                 **({"worker": job.worker} if job.worker else {}),
                 **({"flagged": True} if image.flagged else {})},
                f"image #{image.id} (job #{job.id}, seed {image.seed}, {image.width}×"
                f"{image.height}, {image.version}): {path}",
            )
        self.done(job.id)

    async def deliver_failure(self, job: JobRow, message: str) -> None:
        self.close_bar(job.id)
        self.emit_error(message, job.id)
        self.done(job.id)

    async def announce(self, origin: dict[str, Any], text: str) -> None:
        self.emit({"type": "text", "text": text}, text)

    def close_bar(self, job_id: int) -> None:
        bar = self.bars.pop(job_id, None)
        if bar is not None:
            bar.close()

    def done(self, job_id: int) -> None:
        self.waiting.discard(job_id)
        if not self.waiting:
            self.all_delivered.set()
