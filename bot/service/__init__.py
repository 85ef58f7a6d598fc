"""The bot's core, between the adapters and the engines (service.py says how it is split)."""

from bot.service.service import HISTORY_LENGTH, Service
from bot.service.types import OPERATOR_PLATFORM, OUR_FAULT, Attachment, Deliverer, Reply, User

__all__ = ["HISTORY_LENGTH", "OPERATOR_PLATFORM", "OUR_FAULT", "Attachment", "Deliverer",
           "Reply", "Service", "User"]
