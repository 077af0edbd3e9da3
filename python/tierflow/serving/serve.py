"""``tierflow serve``: a CoE of real checkpoints behind HTTP on Ray Serve.

Two deployments: ``Front`` (the ingress: an :class:`~tierflow.routers.EmbeddingRouter` on
all-MiniLM-L6-v2 picks the expert of each prompt) and ``Experts`` (replicas that hold at most
``max_experts`` expert models each, through Serve's model multiplexing: a request carries its
expert as the multiplexed model id, Serve sends it to a replica that holds it when there is one,
and a replica loads a model it lacks with :func:`tierflow.models.load` into its own
TieredStore, evicting its least recently used model).

Endpoints:

- ``POST /v1/completions``: ``{"prompt": text or [token ids], "max_tokens": 16, "expert": name
  (optional: skips the router), "stream": false}`` -> ``{"expert", "route", "prompt_ids",
  "tokens", "text"}``; with ``"stream": true`` the tokens come as server-sent events
  (``data: {"token": id}`` per token, then ``data: [DONE]``; the expert generates the tokens
  first, then they are sent one event each).
- ``GET /v1/experts``: the experts and their checkpoint folders.
- ``GET /metrics``: Prometheus text: requests per status and expert, latency quantiles, expert
  loads and bytes read into the replicas' stores.

A bad request gets HTTP 400 with ``{"error": ...}``; an unknown expert 404; a server whose
queue is full (``max_queued`` requests waiting per replica) 503.
"""

# no "from __future__ import annotations": FastAPI reads the handlers' annotations at runtime

import json
import time
from typing import Any

import numpy as np

__all__ = ["build_app", "serve_coe"]


def _experts_from_coe(path: str) -> dict[str, str]:
    """``{expert: checkpoint folder}`` from a CoE JSON whose experts came from checkpoints."""
    from ..errors import InvalidArgumentError
    from ..sim.coe import CoE

    g = CoE.from_json(path)
    out = {}
    for e in g.experts:
        src = g.nodes[e].source or ""
        if not src.startswith("safetensors:"):
            raise InvalidArgumentError(
                f"serve: expert {e!r} has no checkpoint (give experts from checkpoint= folders)"
            )
        out[e] = src[len("safetensors:") :]
    return out


def build_app(
    experts: dict[str, str],
    examples: dict[str, list[str]],
    *,
    fallback: str | None = None,
    max_experts: int = 2,
    replicas: int = 1,
    max_queued: int = 8,
    max_ongoing: int = 4,
    ram: str = "256MiB",
) -> Any:
    """The Serve application (bind it with ``serve.run``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from ray import serve

    @serve.deployment(
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
        ray_actor_options={"num_cpus": 0},
    )
    class Experts:
        def __init__(self, sources: dict[str, str], ram: str) -> None:
            import tempfile

            from ..store import Tier, TieredStore

            self.sources = sources
            self.folder = tempfile.mkdtemp(prefix="tierflow-serve-")
            self.store = TieredStore(
                self.folder, [Tier("ram", ram), Tier("disk", path="disk")], default_tier="ram"
            )
            self.loads = 0

        @serve.multiplexed(max_num_models_per_replica=max_experts)
        async def model(self, name: str) -> Any:
            from ..models import load

            m = load(self.sources[name], store=self.store, prefix=f"{name}#{self.loads}/")
            self.loads += 1
            return m

        async def generate(self, ids: list[int], max_tokens: int) -> list[int]:
            m = await self.model(serve.get_multiplexed_model_id())
            prompt = np.asarray(ids, dtype=np.int64)
            out = m.generate(prompt, max_tokens)
            return [int(t) for t in np.asarray(out)[prompt.size :]]

        def stats(self) -> dict[str, Any]:
            links = self.store.stats()["counters"]["links"]
            return {"loads": self.loads, "links": {k: int(v["bytes"]) for k, v in links.items()}}

    app = FastAPI()

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Front:
        def __init__(self, handle: Any) -> None:
            from ..models import SentenceEncoder
            from ..routers import EmbeddingRouter

            self.handle = handle
            self.router = EmbeddingRouter(SentenceEncoder.load(), examples, k=4, fallback=fallback)
            self.names = sorted(experts)
            self.count: dict[tuple[str, str], int] = {}
            self.lat: list[float] = []

        def _note(self, status: int, expert: str, t0: float) -> None:
            key = (str(status), expert)
            self.count[key] = self.count.get(key, 0) + 1
            if status == 200:
                self.lat.append(time.perf_counter() - t0)
                del self.lat[:-10000]

        def _err(self, status: int, msg: str, expert: str, t0: float) -> Any:
            self._note(status, expert, t0)
            return JSONResponse({"error": msg}, status_code=status)

        @app.post("/v1/completions")
        async def completions(self, request: Request) -> Any:
            from ray.serve.exceptions import BackPressureError

            t0 = time.perf_counter()
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return self._err(400, f"the body is not JSON: {e}", "", t0)
            if not isinstance(body, dict):
                return self._err(400, "the body must be a JSON object", "", t0)
            prompt = body.get("prompt")
            max_tokens = body.get("max_tokens", 16)
            if (
                isinstance(max_tokens, bool)
                or not isinstance(max_tokens, int)
                or not 0 <= max_tokens <= 4096
            ):
                return self._err(
                    400, f"max_tokens must be an integer in [0, 4096], got {max_tokens!r}", "", t0
                )
            if isinstance(prompt, str) and prompt:
                from ..models.coe import byte_tokenize

                text, ids = prompt, byte_tokenize(prompt).tolist()
            elif (
                isinstance(prompt, list)
                and prompt
                and all(
                    isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 256 for t in prompt
                )
            ):
                ids = list(prompt)
                text = bytes(ids).decode("utf-8", errors="replace")
            else:
                return self._err(
                    400,
                    "prompt must be a non-empty string or a list of token ids in [0, 256)",
                    "",
                    t0,
                )
            expert = body.get("expert")
            route: dict[str, Any] = {}
            if expert is None:
                r = self.router.route(text)
                expert = r.expert
                route = {"scores": r.scores, "fell_back": r.fell_back}
            elif expert not in experts:
                return self._err(
                    404, f"unknown expert {expert!r} (known: {self.names})", str(expert), t0
                )
            try:
                tokens = await self.handle.options(multiplexed_model_id=expert).generate.remote(
                    ids, max_tokens
                )
            except BackPressureError as e:
                return self._err(503, f"the server is full: {e}", expert, t0)
            self._note(200, expert, t0)
            if body.get("stream"):

                def events() -> Any:
                    for tok in tokens:
                        yield f"data: {json.dumps({'token': tok})}\n\n"
                    yield "data: [DONE]\n\n"

                return StreamingResponse(events(), media_type="text/event-stream")
            return {
                "expert": expert,
                "route": route,
                "prompt_ids": ids,
                "tokens": tokens,
                "text": bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace"),
            }

        @app.get("/v1/experts")
        async def list_experts(self) -> Any:
            return {"experts": [{"name": e, "checkpoint": experts[e]} for e in self.names]}

        @app.get("/metrics")
        async def metrics(self) -> Any:
            st = await self.handle.stats.remote()
            lines = [
                "# HELP tierflow_requests_total Requests by HTTP status and expert.",
                "# TYPE tierflow_requests_total counter",
            ]
            for (status, e), n in sorted(self.count.items()):
                lines.append(f'tierflow_requests_total{{status="{status}",expert="{e}"}} {n}')
            lines += [
                "# HELP tierflow_request_latency_seconds Latency of served requests.",
                "# TYPE tierflow_request_latency_seconds summary",
            ]
            lat = np.asarray(self.lat)
            for q in (0.5, 0.9, 0.99):
                v = float(np.quantile(lat, q)) if len(lat) else float("nan")
                lines.append(f'tierflow_request_latency_seconds{{quantile="{q}"}} {v}')
            lines.append(f"tierflow_request_latency_seconds_count {len(lat)}")
            lines.append(f"tierflow_request_latency_seconds_sum {float(lat.sum())}")
            lines += [
                "# HELP tierflow_expert_loads_total Expert models loaded into a replica.",
                "# TYPE tierflow_expert_loads_total counter",
                f"tierflow_expert_loads_total {st['loads']}",
                "# HELP tierflow_tier_bytes_total Bytes moved between the replicas' store tiers.",
                "# TYPE tierflow_tier_bytes_total counter",
            ]
            for link, b in sorted(st["links"].items()):
                lines.append(f'tierflow_tier_bytes_total{{link="{link}"}} {b}')
            return PlainTextResponse("\n".join(lines) + "\n")

    return Front.bind(Experts.bind(experts, ram))  # type: ignore[attr-defined]


def serve_coe(
    experts: dict[str, str],
    examples: dict[str, list[str]],
    *,
    port: int = 8000,
    fallback: str | None = None,
    **kw: Any,
) -> Any:
    """Start Serve's HTTP proxy on 127.0.0.1:``port`` and deploy the app (Ray must be
    initialised); returns the app handle. Stop with ``ray.serve.shutdown()``."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    return serve.run(
        build_app(experts, examples, fallback=fallback, **kw), name="tierflow", route_prefix="/"
    )
