"""The HTTP hot path stands on uvicorn's internal ``HttpToolsProtocol``: these tests fail, naming
the version, when an installed uvicorn or httptools is not the one the gateway was tested with.

`serving/rest/protocol.py` subclasses ``HttpToolsProtocol``, overrides most of its parser and
connection callbacks, reads its private state (``cycle``, ``pipeline``, ``flow``, ``tasks``,
``server_state`` ...) and stands a ``_HotExchange`` where uvicorn keeps a request's cycle. None of
that is uvicorn's public API, so `pyproject.toml` pins uvicorn and httptools to the minor versions
tested (docs/ARCHITECTURE.md, "The HTTP layer and uvicorn's internals"). A pin can be widened by
hand; these tests then say exactly what changed. To move to a new uvicorn: read the changed
methods against `serving/rest/protocol.py`, run tests/serving/test_serving_hot_protocol.py and
test_serving_connections.py, then record the new fingerprints below and move the pins.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import tomllib
from pathlib import Path

import httptools
import uvicorn
from uvicorn.protocols.http import httptools_impl

from serving.rest import protocol

ROOT = Path(__file__).resolve().parents[2]

#: the versions serving/rest/protocol.py was written and tested against
TESTED = {"uvicorn": "0.55.0", "httptools": "0.9.0"}

#: sha256 (first 16 hex digits) of the source of each method of uvicorn's HttpToolsProtocol, as
#: in TESTED["uvicorn"]; the gateway's protocol inherits or overrides every one of them
FINGERPRINTS = {
    "__init__": "4f08999410347141",
    "_get_upgrade": "7b1305aac7b87064",
    "_should_upgrade": "8fcad1ab8e096739",
    "_should_upgrade_to_ws": "d580849b4df878c3",
    "_start_asgi_task": "8d0189e65525db42",
    "_unset_keepalive_if_required": "00a6a4e47214e68e",
    "_unsupported_upgrade_warning": "55bbd2762b189d9a",
    "connection_lost": "c91a4c9bf2e29c55",
    "connection_made": "6efb565ff3d36b91",
    "data_received": "010a7ae59a5d3b1a",
    "eof_received": "5652627579a02369",
    "handle_websocket_upgrade": "d5da377bfc77e588",
    "on_body": "dba9c32aeba35b6a",
    "on_header": "1e86ebb6cea0458c",
    "on_headers_complete": "1ea8589acfad92d8",
    "on_message_begin": "96d377fdc7c2baef",
    "on_message_complete": "1fbad42dc31fc01f",
    "on_response_complete": "64e254f28e389e76",
    "on_url": "37be44e962b04ca8",
    "pause_writing": "17a8fd215d96a13c",
    "resume_writing": "7844bbaa8cceb1ef",
    "send_400_response": "ae5a4a3782b646fd",
    "shutdown": "d7351fa33f00d430",
    "timeout_keep_alive_handler": "8b53bf5f2e202970",
}

UPGRADE_HINT = (
    "serving/rest/protocol.py subclasses uvicorn's internal HttpToolsProtocol and was tested "
    f"with uvicorn {TESTED['uvicorn']} and httptools {TESTED['httptools']}. Review it against "
    "the new source (tests/serving/test_serving_uvicorn_pin.py says how) before using this version."
)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _fingerprint(function: object) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_installed_uvicorn_and_httptools_are_the_tested_minor_versions() -> None:
    for name, module in (("uvicorn", uvicorn), ("httptools", httptools)):
        installed = module.__version__
        assert _minor(installed) == _minor(TESTED[name]), (
            f"{name} {installed} is installed, an untested version. {UPGRADE_HINT}"
        )


def test_pyproject_pins_the_tested_minor_versions() -> None:
    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serve"]
    for name, tested in TESTED.items():
        (requirement,) = [r for r in serve if re.match(rf"{name}\b", r)]
        major, minor = (int(part) for part in _minor(tested).split("."))
        assert requirement == f"{name}>={major}.{minor},<{major}.{minor + 1}", (
            f"pyproject.toml's serve extra says {requirement!r}: pin {name} to the tested minor "
            f"version {major}.{minor} (or record a newly tested one in this file)"
        )


def test_uvicorn_httptoolsprotocol_has_the_shape_the_gateway_was_written_for() -> None:
    base = httptools_impl.HttpToolsProtocol
    methods = {n: m for n, m in vars(base).items() if inspect.isfunction(m)}
    changed = sorted(n for n in FINGERPRINTS.keys() & methods.keys() if _fingerprint(methods[n]) != FINGERPRINTS[n])  # fmt: skip
    gone = sorted(FINGERPRINTS.keys() - methods.keys())
    new = sorted(methods.keys() - FINGERPRINTS.keys())
    assert not (changed or gone or new), (
        f"uvicorn {uvicorn.__version__}'s HttpToolsProtocol is not the one tested "
        f"({TESTED['uvicorn']}): changed {changed}, removed {gone}, added {new}. {UPGRADE_HINT}"
    )
    assert httptools_impl.STATUS_LINE[200] == b"HTTP/1.1 200 OK\r\n"


def _self_attributes(tree: ast.AST, *, stored: bool) -> set[str]:
    """Names of ``self.X`` stored (or, with ``stored=False``, loaded) anywhere in ``tree``."""
    wanted = ast.Store if stored else ast.Load
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, wanted)
    }


def test_every_uvicorn_attribute_the_gateway_reads_still_exists() -> None:
    """What the gateway's protocol reads from ``self`` and does not define itself must be
    uvicorn's: set in HttpToolsProtocol, or one of its methods. Checked on the installed source,
    so a rename in uvicorn fails here by name instead of as an AttributeError under load."""
    ours = next(
        node
        for node in ast.parse(inspect.getsource(protocol)).body
        if isinstance(node, ast.ClassDef) and node.name == "GatewayHttpProtocol"
    )
    defined_here = (
        _self_attributes(ours, stored=True)
        | {
            node.name
            for node in ours.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        | {
            target.id
            for node in ours.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
    )
    base = httptools_impl.HttpToolsProtocol
    uvicorns = _self_attributes(ast.parse(inspect.getsource(base)), stored=True) | set(dir(base))
    missing = sorted(_self_attributes(ours, stored=False) - defined_here - uvicorns)
    assert not missing, (
        f"uvicorn {uvicorn.__version__}'s HttpToolsProtocol no longer has {missing}. {UPGRADE_HINT}"
    )


def test_the_hot_exchange_has_every_field_uvicorn_reads_from_a_cycle() -> None:
    """uvicorn's connection code treats whatever sits in ``self.cycle`` as its request cycle; the
    hot path's ``_HotExchange`` must answer every field it reads there (body and more_body are
    only read on the ASGI path, which a hot exchange never takes)."""
    source = inspect.getsource(httptools_impl.HttpToolsProtocol)
    read = set(re.findall(r"\bcycle\.([a-z_]+)", source)) - {"body", "more_body", "run_asgi"}
    exchange = protocol._HotExchange
    fields = set(exchange.__slots__) | set(vars(exchange))
    assert read <= fields, (
        f"uvicorn {uvicorn.__version__} reads {sorted(read - fields)} from a request cycle, "
        f"which serving/rest/protocol._HotExchange lacks. {UPGRADE_HINT}"
    )
