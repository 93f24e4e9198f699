"""Test kit: FakeElectric, a protocol-faithful fake ElectricSQL server, shipped with replica.

    from replica.testing import FakeElectric, Fault, serve, serve_in_thread, sample_fake

    fake = FakeElectric()
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True},
                                "title": {"type": "text"}})
    fake.insert("items", {"id": "1", "title": "a"})
    fake.respond("GET", "/v1/shape?table=items&offset=-1")            # pure, synchronous
    httpx.AsyncClient(transport=httpx.MockTransport(fake.handler))     # in-process, holds long-polls
    async with serve(fake) as server: server.url                        # real loopback sockets

The behaviour follows shared/docs/electric-protocol.md (Electric 1.x); see ``FakeElectric``
and ``Fault`` for the details. ``python -m replica.testing serve`` runs the sample dataset.
``fake/`` is the in-memory server and the protocol machinery both servers share; ``postgres/``
serves a real Postgres database through that machinery (needs the ``postgres`` extra).

May import: the foundation, ``replica.typemap``, ``replica.protocol``.
Never imported by: the library layers (``replica.cli``'s demo uses it).
"""

from replica.testing.fake.database import Transaction
from replica.testing.fake.faults import Fault, FaultPlan
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.sample import sample_fake
from replica.testing.fake.service import FakeElectric
from replica.testing.server import Server, serve, serve_in_thread

__all__ = [
    "FakeElectric",
    "FakeResponse",
    "Fault",
    "FaultPlan",
    "Server",
    "Transaction",
    "sample_fake",
    "serve",
    "serve_in_thread",
]
