"""Prometheus metrics of the tenant connections (needs ``prometheus-client``: the
``tenancy[metrics]`` extra).

Register the collector once per process, in an ``AppConfig.ready()`` of yours::

    import tenancy.metrics
    tenancy.metrics.register()          # into prometheus_client's default registry

and expose the registry as you already do (``prometheus_client.make_wsgi_app()``,
django-prometheus' view, ...). Each scrape reads ``tenancy.connections.snapshot()``:

- ``tenancy_connections_open{server}``: connections to tenants' own databases;
- ``tenancy_connections_idle{server}``: of those, held by threads between requests;
- ``tenancy_connections_waiting{server}``: threads waiting for a connection at the cap;
- ``tenancy_connections_refused_total{server}``: refused at the cap since the start;
- ``tenancy_connections_shared``: connections shared by schema tenants;
- ``tenancy_connections_closed_for_room_total``: idle ones closed at the cap;
- ``tenancy_connections_cap``: ``MAX_OPEN_CONNECTIONS`` (absent without a cap);
- ``tenancy_replica_lag_seconds{server,replica}`` and ``tenancy_replica_usable{...}``:
  each read replica's last check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from tenancy.connections import snapshot


class ConnectionsCollector(Collector):
    """Reads the connections of this process at each scrape."""

    def collect(self) -> Iterator[Any]:
        state = snapshot()
        per_server = {
            "open": GaugeMetricFamily(
                "tenancy_connections_open", "Open tenant connections", labels=["server"]
            ),
            "idle": GaugeMetricFamily(
                "tenancy_connections_idle",
                "Tenant connections held by threads between requests",
                labels=["server"],
            ),
            "waiting": GaugeMetricFamily(
                "tenancy_connections_waiting",
                "Threads waiting for a tenant connection at the cap",
                labels=["server"],
            ),
        }
        refused = CounterMetricFamily(
            "tenancy_connections_refused",
            "Tenant connections refused at the cap",
            labels=["server"],
        )
        for name, server in state.servers.items():
            for key, family in per_server.items():
                family.add_metric([name], getattr(server, key))
            refused.add_metric([name], server.refused)
        yield from per_server.values()
        yield refused
        yield GaugeMetricFamily(
            "tenancy_connections_shared",
            "Connections shared by schema tenants",
            value=state.shared,
        )
        yield CounterMetricFamily(
            "tenancy_connections_closed_for_room",
            "Idle tenant connections closed to make room at the cap",
            value=state.closed_for_room,
        )
        if state.cap is not None:
            yield GaugeMetricFamily(
                "tenancy_connections_cap", "MAX_OPEN_CONNECTIONS", value=state.cap
            )
        lag = GaugeMetricFamily(
            "tenancy_replica_lag_seconds",
            "Replay lag of a read replica at its last check",
            labels=["server", "replica"],
        )
        usable = GaugeMetricFamily(
            "tenancy_replica_usable",
            "Whether reads go to a read replica (1) or skip it (0)",
            labels=["server", "replica"],
        )
        for name, replicas in state.replicas.items():
            for index, replica in enumerate(replicas):
                if replica["lag"] is not None:
                    lag.add_metric([name, str(index)], replica["lag"])
                usable.add_metric([name, str(index)], 1 if replica["usable"] else 0)
        yield lag
        yield usable


def register(registry: CollectorRegistry = REGISTRY) -> ConnectionsCollector:
    """Add the collector to ``registry`` (prometheus_client's default one)."""
    collector = ConnectionsCollector()
    registry.register(collector)
    return collector
