"""A local stand-in for the Copernicus Climate Data Store, for tests with the real cdsapi client.

It speaks the part of the current CDS API that cdsapi >= 0.7 uses, through
ecmwf-datastores-client, for a key without ':' (OGC API - Processes):

* ``GET  /api/catalogue/v1/messages``                      -> no messages
* ``GET  /api/retrieve/v1/processes/{dataset}``             -> the process
* ``POST /api/retrieve/v1/processes/{dataset}/execution``   -> a job, ``accepted``, with a ``monitor`` link
* ``GET  /api/retrieve/v1/jobs/{id}``                       -> ``accepted`` -> ``running`` -> ``successful``
  (OGC's name for a queued job is ``accepted``), then with a ``results`` link
* ``GET  /api/retrieve/v1/jobs/{id}/results``               -> the asset: href, size, type
* ``HEAD/GET /api/download/{id}.{ext}``                     -> the file, with byte ranges (resumed transfers)

The key is checked in the ``PRIVATE-TOKEN`` header (HTTP 401 otherwise). The
server serves one real file for every request (it does not cut the area), records
what it received, and can misbehave: answer HTTP 500 to the first `fail_first`
submissions, or cut the first `cut_transfers` downloads half-way.

`build_month_grib` makes the file to serve: a whole month of real ERA5 GRIB
messages, cloned from a sample file with ecCodes and re-dated; `SAMPLE_GRID` is
a fine grid on that sample's points.
"""

from __future__ import annotations

import calendar
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MIME = {".grib": "application/x-grib", ".nc": "application/netcdf"}
SAMPLE_GRID = {"resolution": 3.0, "lat": [28.5, 64.5], "lon": [-10.5, 25.5]}
"""A fine grid (``grid.hr``) on the 3-degree ERA5 sample's points: 12 x 12 cells, centres 30..63 N, -9..24 E."""


def build_month_grib(sample: Path, target: Path, year: int, month: int, hours: list[int], member: int = 0) -> Path:
    """A GRIB file with every `hours` of every day of a month, cloned from a real sample's first time.

    Each field of the sample's first date and time (for ensemble member `member`)
    is cloned and re-dated; a small offset, 0.05 K (t) or 0.05 m2 s-2 (z) per day
    and 0.01 per hour, makes every time distinct: value = sample + 0.05 (day - 1) + 0.01 hour.
    """
    import eccodes

    templates = []
    with open(sample, "rb") as f:
        first = None
        while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
            stamp = (eccodes.codes_get(handle, "dataDate"), eccodes.codes_get(handle, "dataTime"))
            first = first or stamp
            if stamp == first and eccodes.codes_get(handle, "number") == member:
                templates.append(handle)
            else:
                eccodes.codes_release(handle)
    days = calendar.monthrange(year, month)[1]
    with open(target, "wb") as out:
        for day in range(1, days + 1):
            for hour in hours:
                for template in templates:
                    clone = eccodes.codes_clone(template)
                    eccodes.codes_set(clone, "dataDate", year * 10000 + month * 100 + day)
                    eccodes.codes_set(clone, "dataTime", hour * 100)
                    values = eccodes.codes_get_values(template)
                    eccodes.codes_set_values(clone, values + 0.05 * (day - 1) + 0.01 * hour)
                    eccodes.codes_write(clone, out)
                    eccodes.codes_release(clone)
    for handle in templates:
        eccodes.codes_release(handle)
    return target


@dataclass
class Job:
    """One submitted request."""

    dataset: str
    inputs: dict[str, Any]
    polls: int = 0


@dataclass
class CDSServer:
    """The fake CDS, on 127.0.0.1 and a free port, in a background thread; use as a context manager."""

    payload: Path
    key: str
    fail_first: int = 0
    """Answer HTTP 500 to this many submissions (POST .../execution) before accepting one."""
    cut_transfers: int = 0
    """Cut this many downloads half-way (the connection closes before Content-Length bytes)."""
    statuses: tuple[str, ...] = ("accepted", "running", "successful")
    """Status of a job at its successive polls; the last one stays."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Accepted submissions: {"dataset": ..., "inputs": ...}."""
    submissions: int = 0
    """Every POST .../execution, including those answered with 500."""
    downloads: list[str | None] = field(default_factory=list)
    """Range header of every GET of the file (None: whole file)."""
    tokens: list[str | None] = field(default_factory=list)
    """PRIVATE-TOKEN header of every request."""
    jobs: dict[str, Job] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))  # bound now: `url` is known
        self._httpd.daemon_threads = True

    def __enter__(self) -> CDSServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """The API root, as in ~/.cdsapirc's ``url:``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/api"

    def status(self, job: Job) -> str:
        job.polls += 1
        return self.statuses[min(job.polls, len(self.statuses)) - 1]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _handler(server: CDSServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read server.* instead
            pass

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, list[str]]:
            path = self.path.split("?", 1)[0]
            for name, pattern in ROUTES.items():
                match = re.fullmatch(pattern, path)
                if match:
                    return name, list(match.groups())
            return "", []

        def _authorised(self) -> bool:
            token = self.headers.get("PRIVATE-TOKEN")
            with lock:
                server.tokens.append(token)
            if token != server.key:
                self._json(401, {"title": "Authentication failed", "detail": "Operation not allowed"})
                return False
            return True

        def _base(self) -> str:
            return server.url

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

        def _get(self, head: bool) -> None:
            name, args = self._route()
            if name == "messages":
                return self._json(200, {"messages": []})
            if name == "download":
                return self._file(args[0], head)
            if not self._authorised():
                return None
            if name == "process":
                return self._json(200, {"id": args[0], "title": args[0], "links": []})
            job = server.jobs.get(args[0]) if args else None
            if job is None:
                return self._json(404, {"title": "not found", "detail": self.path})
            if name == "job":
                with lock:
                    status = server.status(job)
                links = [{"rel": "self", "href": f"{self._base()}/retrieve/v1/jobs/{args[0]}"}]
                if status in ("successful", "failed"):
                    links.append({"rel": "results", "href": f"{self._base()}/retrieve/v1/jobs/{args[0]}/results"})
                return self._json(
                    200,
                    {
                        "processID": job.dataset,
                        "jobID": args[0],
                        "type": "process",
                        "status": status,
                        "created": _now(),
                        "updated": _now(),
                        "metadata": {"request": {"ids": job.inputs}, "log": []},
                        "links": links,
                    },
                )
            if name == "results":
                if server.statuses[-1] == "failed":
                    return self._json(400, {"title": "The job has failed", "traceback": "MARS returned no data"})
                suffix = server.payload.suffix
                return self._json(
                    200,
                    {
                        "asset": {
                            "value": {
                                "type": MIME.get(suffix, "application/octet-stream"),
                                "href": f"{self._base()}/download/{args[0]}{suffix}",
                                "file:size": server.payload.stat().st_size,
                            }
                        }
                    },
                )
            return self._json(404, {"title": "not found", "detail": self.path})

        def do_POST(self) -> None:
            name, args = self._route()
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if name != "execution":
                return self._json(404, {"title": "not found", "detail": self.path})
            if not self._authorised():
                return None
            with lock:
                server.submissions += 1
                failing = server.submissions <= server.fail_first
            if failing:
                return self._json(500, {"title": "Internal Server Error", "detail": "try again"})
            job_id = uuid.uuid4().hex
            with lock:
                server.jobs[job_id] = Job(args[0], body.get("inputs", {}))
                server.requests.append({"dataset": args[0], "inputs": body.get("inputs", {})})
            href = f"{self._base()}/retrieve/v1/jobs/{job_id}"
            return self._json(
                201,
                {
                    "processID": args[0],
                    "jobID": job_id,
                    "type": "process",
                    "status": "accepted",
                    "created": _now(),
                    "links": [{"rel": "monitor", "href": href}, {"rel": "self", "href": href}],
                },
            )

        def do_DELETE(self) -> None:
            name, args = self._route()
            if name == "job" and self._authorised():
                server.jobs.pop(args[0], None)
                self._json(200, {"status": "dismissed"})

        def _file(self, name: str, head: bool) -> None:
            data = server.payload.read_bytes()
            start = 0
            wanted = self.headers.get("Range")
            if wanted:
                start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            body = data[start:]
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Type", MIME.get(server.payload.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            with lock:
                server.downloads.append(wanted)
                cut = server.cut_transfers > 0
                server.cut_transfers -= int(cut)
            if cut:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


ROUTES = {
    "messages": r"/api/catalogue/v1/messages",
    "process": r"/api/retrieve/v1/processes/([^/]+)",
    "execution": r"/api/retrieve/v1/processes/([^/]+)/execution",
    "job": r"/api/retrieve/v1/jobs/([^/]+)",
    "results": r"/api/retrieve/v1/jobs/([^/]+)/results",
    "download": r"/api/download/([^/]+)",
}


def build_statics_grib(sample: Path, target: Path) -> Path:
    """Surface geopotential (m2 s-2) and land-sea mask (0/1) on a real sample's grid, in GRIB.

    Both are cloned from the sample's first field F (z at 500 hPa): orography
    h = clip((F - mean F) / 5, 0, 4000) m, surface geopotential g h, land where h > 0.
    """
    import eccodes

    from geodiff.constants import G

    with open(sample, "rb") as f:
        template = eccodes.codes_grib_new_from_file(f)
    values = eccodes.codes_get_values(template)
    orography = (values - values.mean()) / 5.0
    orography = orography.clip(0.0, 4000.0)
    with open(target, "wb") as out:
        for name, field in (("z", G * orography), ("lsm", (orography > 0).astype(float))):
            clone = eccodes.codes_clone(template)
            eccodes.codes_set(clone, "typeOfLevel", "surface")
            eccodes.codes_set(clone, "level", 0)
            eccodes.codes_set(clone, "shortName", name)
            eccodes.codes_set_values(clone, field)
            eccodes.codes_write(clone, out)
            eccodes.codes_release(clone)
    eccodes.codes_release(template)
    return target
