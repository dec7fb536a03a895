"""Outbound SMS: the port every sender satisfies, and its adapters."""

from xacthuc.sms.base import SmsDeliveryError, SmsMessage, SmsSender

__all__ = ["SmsDeliveryError", "SmsMessage", "SmsSender"]
