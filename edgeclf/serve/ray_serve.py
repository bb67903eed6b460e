"""``edgeclf serve --ray``: the same app as a Ray Serve deployment (``pip install 'edgeclf[ray]'``).

Each replica builds its own app with :func:`edgeclf.serve.create_app` (a builder evaluated on the
replica, so no loaded model or metrics registry is pickled) and loads the bundle, or follows the
registry, itself: the routes, errors, micro-batching and metrics are those of ``edgeclf serve``.
Ray Serve's proxy spreads requests over the replicas; ``num_replicas`` is fixed, or with
``autoscale`` Ray Serve scales between ``min_replicas`` and ``max_replicas`` on the requests in
flight per replica. A Ray cluster (``address``) runs the replicas where it has CPUs; the bundle or
registry path must be readable there.

    from edgeclf.serve.ray_serve import deployment
    from ray import serve
    serve.run(deployment("bundle/", replicas=2), route_prefix="/")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclf.errors import ConfigError
from edgeclf.serve.app import ServeOptions


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 1
    #: autoscale between min_replicas and max_replicas (replicas is the initial count)
    autoscale: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    #: requests in flight per replica Ray Serve's autoscaler aims for
    target_ongoing_requests: float = 8.0
    #: CPUs Ray reserves per replica (the C runtime's threads should fit in them)
    cpus_per_replica: float = 1.0

    def check(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")
        if self.cpus_per_replica <= 0:
            raise ConfigError(f"--ray-cpus must be positive, got {self.cpus_per_replica}")
        if self.autoscale and not 1 <= self.min_replicas <= self.replicas <= self.max_replicas:
            raise ConfigError(
                f"autoscaling needs 1 <= min ({self.min_replicas}) <= replicas ({self.replicas}) <= max ({self.max_replicas})"
            )


def deployment(
    bundle: str | Path | None = None,
    *,
    registry: str | Path | None = None,
    options: ServeOptions | None = None,
    ray: RayOptions | None = None,
) -> Any:
    """A bound Ray Serve application serving ``bundle`` (or the registry's current version)."""
    try:
        from ray import serve
    except ImportError as e:
        raise ConfigError(f"Ray Serve is not installed: pip install 'edgeclf[ray]' ({e})") from None
    if (bundle is None) == (registry is None):
        raise ConfigError("serve a bundle or a registry: give exactly one")
    ray = ray or RayOptions()
    ray.check()
    opts = options or ServeOptions()
    if opts.lanes == 0 and opts.threads == 0:  # a replica's share is its reserved CPUs, not the node's cores
        from dataclasses import replace

        from edgeclf.serve.app import inference_lanes

        lanes, threads = inference_lanes(opts, cores=max(1, int(ray.cpus_per_replica)))
        opts = replace(opts, lanes=lanes, threads=threads)
    bundle_s = None if bundle is None else str(Path(bundle).resolve())
    registry_s = None if registry is None else str(Path(registry).resolve())

    def build() -> Any:  # runs on each replica
        from edgeclf.serve.app import create_app

        return create_app(bundle_s, registry=registry_s, options=opts)

    settings: dict[str, Any] = {
        "name": "edgeclf",
        "ray_actor_options": {"num_cpus": ray.cpus_per_replica},
        "max_ongoing_requests": max(opts.max_queue, 1),
    }
    if ray.autoscale:
        settings["autoscaling_config"] = {
            "min_replicas": ray.min_replicas,
            "initial_replicas": ray.replicas,
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": ray.target_ongoing_requests,
        }
    else:
        settings["num_replicas"] = ray.replicas
    return serve.deployment(serve.ingress(build)(), **settings).bind()


def run(
    bundle: str | Path | None,
    *,
    registry: str | Path | None = None,
    options: ServeOptions | None = None,
    ray: RayOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    address: str | None = None,
    blocking: bool = True,
) -> Any:
    """Start (or join, with ``address``) Ray, and serve on ``host:port`` through Ray Serve's proxy."""
    import ray as ray_mod
    from ray import serve

    app = deployment(bundle, registry=registry, options=options, ray=ray)
    if not ray_mod.is_initialized():
        ray_mod.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="edgeclf", route_prefix="/", blocking=blocking)
