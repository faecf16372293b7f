"""Long-lived stateful services, one trio task each (see ``_mailbox`` for the runtime, and
``_durable`` for services whose state is kept in the store)."""

from zajel.services._durable import CheckStore, StoreFailure, StoreOk
from zajel.services._mailbox import (
    Address,
    Envelope,
    LocalAddress,
    Service,
    ServiceFailure,
    run_service,
)
from zajel.services._runtime import Services, open_services

__all__ = [
    "Address",
    "CheckStore",
    "Envelope",
    "LocalAddress",
    "Service",
    "ServiceFailure",
    "Services",
    "StoreFailure",
    "StoreOk",
    "open_services",
    "run_service",
]
