"""Long-lived stateful services, one trio task each (see ``_mailbox`` for the runtime)."""

from zajel.services._mailbox import Address, Envelope, LocalAddress, Service, run_service
from zajel.services._runtime import Services, open_services

__all__ = [
    "Address",
    "Envelope",
    "LocalAddress",
    "Service",
    "Services",
    "open_services",
    "run_service",
]
