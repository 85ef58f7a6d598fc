"""What the bot and its remote workers share in Redis: key names, entries, and the two scripts
that make a job's lease exact.

- `canvas:inbox:<worker>`: a stream per worker incarnation, everything the bot sends it (jobs
  and control, in order), read by the worker in consumer group `workers`. A job's entry stays
  pending (its lease) until the worker finishes it; the worker renews its leases while it
  lives, and the bot takes back (XAUTOCLAIM) what a dead worker left. An entry is deleted once
  settled, so the stream holds exactly what the worker holds.
- `canvas:events`: one stream of everything the workers say, read by the bot in group `bot`;
  an entry is acknowledged and deleted once the bot has acted on it (stored a result), so a
  bot that restarts finds what came back meanwhile.
- `canvas:worker:<worker>`: the heartbeat, a JSON record that expires: name, device, the
  worker's Ready, its models in memory, its free slots.
- `canvas:workers`: the set of worker incarnations whose inbox may still hold entries.

Each entry carries one protocol message (`m`) and the bytes of the blobs it names (`b:<key>`),
so no disk is shared: the receiver checks each blob against its key (a SHA-256) as it stores it.
This module imports only the standard library and engine/, like the rest of the boundary.
"""

from __future__ import annotations

from engine import protocol
from engine.blobs import LocalBlobs, is_key, key_of, suffix_of

EVENTS = "canvas:events"
WORKERS = "canvas:workers"
WORKER_GROUP = "workers"
BOT_GROUP = "bot"
BOT_CONSUMER = "bot"
MAX_DELIVERIES = 3  # a job that has stopped this many workers fails


def inbox(worker: str) -> str:
    return f"canvas:inbox:{worker}"


def heartbeat(worker: str) -> str:
    return f"canvas:worker:{worker}"


def blob_keys(message: protocol.ToEngine | protocol.FromEngine) -> list[str]:
    """The blobs a message names, which travel with it."""
    match message:
        case protocol.Job(params=params):
            return [key for key in (params.image, params.mask) if key] + [
                key for _, _, key in params.loras or () if key]
        case protocol.UseVersion(chain=chain):
            return [adapter.blob for adapter in chain]
        case protocol.Train(parents=parents, examples=examples):
            return [a.blob for a in parents] + [e.image for e in examples]
        case protocol.Result(images=images):
            return [image.blob for image in images]
        case protocol.TrainDone(adapter=adapter):
            return [adapter]
    return []


def kept_blobs(message: protocol.ToEngine) -> list[str]:
    """The blobs of a message that a worker keeps once it has them (LoRA files, which many
    jobs name), so each goes to a worker once; a job's pictures go with every job."""
    match message:
        case protocol.Job(params=params):
            return [key for _, _, key in params.loras or () if key]
        case protocol.UseVersion(chain=chain):
            return [adapter.blob for adapter in chain]
        case protocol.Train(parents=parents):
            return [adapter.blob for adapter in parents]
    return []


def job_inputs(message: protocol.Job) -> list[str]:
    """A job's pictures (its image and mask), which the worker needs only while it runs."""
    return [key for key in (message.params.image, message.params.mask) if key]


def entry(message: protocol.ToEngine | protocol.FromEngine, blobs: LocalBlobs, *,
          leave_out: frozenset[str] = frozenset(), **extra: str) -> dict[str, bytes | str]:
    """A stream entry: the message, the bytes of its blobs but those the receiver has
    (`leave_out`), and any `extra` fields."""
    fields: dict[str, bytes | str] = {"m": protocol.encode(message), **extra}
    for key in dict.fromkeys(blob_keys(message)):
        if key not in leave_out:
            fields[f"b:{key}"] = blobs.path(key).read_bytes()
    return fields


def blob_bytes(fields: dict[bytes, bytes]) -> int:
    """How many bytes of blobs the entry carries: reading it hashes and writes them."""
    return sum(len(data) for name, data in fields.items() if name.startswith(b"b:"))


def blob_names(fields: dict[bytes, bytes]) -> list[str]:
    """The keys of the blobs an entry carries, as named (not yet checked)."""
    return [name[2:].decode(errors="replace") for name in fields if name.startswith(b"b:")]


class BadEntry(ValueError):
    """An entry that is not a message, or a blob whose bytes do not match its key."""


def read_entry(fields: dict[bytes, bytes], blobs: LocalBlobs
               ) -> protocol.ToEngine | protocol.FromEngine:
    """The entry's message, after storing the blobs it carries (each checked by its hash)."""
    for name, data in fields.items():
        if not name.startswith(b"b:"):
            continue
        key = name[2:].decode(errors="replace")
        if not is_key(key):
            raise BadEntry(f"{key[:80]!r} is not a blob's key")
        if blobs.has(key):
            continue
        if key_of(data, suffix_of(key)) != key:
            raise BadEntry(f"the blob {key} arrived damaged (its hash does not match)")
        blobs.put(data, suffix_of(key))
    try:
        return protocol.decode(fields[b"m"])
    except (KeyError, ValueError, TypeError) as error:
        raise BadEntry(f"not a message: {error}") from None


# The worker finishes a job only while it still holds its lease: the result goes out and the
# entry is settled in one step, or not at all (the bot took it back: another worker runs it).
# KEYS: inbox, events. ARGV: group, consumer, entry id, then the event's field/value pairs.
FINISH = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

# The worker's leases, renewed: every entry pending to this consumer has its idle time reset
# (XCLAIM to itself, JUSTID: the delivery count is left alone). KEYS: inbox. ARGV: group,
# consumer.
RENEW = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
for _, entry in ipairs(pending) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry[1], 'JUSTID')
end
return #pending
"""
