"""Loading handlers from the config: entry points, `module:attr`, and every way it can fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from consumer.handler_api import BatchResult, FunctionHandler, handler
from consumer.handlers.log import LogHandler
from consumer.handlers.plugins import (
    GROUP,
    HandlerSpec,
    PluginError,
    available_handlers,
    close_handlers,
    load_handlers,
)
from consumer.keys import dedup_key
from consumer.pipeline.dispatch import Dispatcher
from consumer.receipts import RECEIPT_CLASSES, Receipt, ReceiptMeta, SmsReport

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "example-plugin"
HERE = __name__  # targets below are referenced as f"{HERE}:name"

# --- handler targets referenced by `module:attr` -----------------------------------------

CLOSED: list[str] = []


@handler(types=["SmsReport"])
def on_report(receipt: SmsReport) -> None:
    """A decorated function limited to SmsReport."""


def plain(receipt: Receipt) -> None:
    """A plain function: becomes a single-receipt handler for all types."""


class Configurable:
    """A class handler with options and a close()."""

    name = "configurable"
    types = ("SmsUp",)

    def __init__(self, label: str, repeat: int = 1) -> None:
        self.label, self.repeat = label, repeat

    def handle(self, receipt: Receipt) -> None:
        """Does nothing."""

    def close(self) -> None:
        CLOSED.append(self.label)


class Nameless:
    """A batch handler class without `name` or `types`."""

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        return BatchResult()

    def close(self) -> None:
        CLOSED.append("nameless")


class BrokenInit:
    def __init__(self) -> None:
        raise ValueError("cannot reach the database")

    def handle(self, receipt: Receipt) -> None:
        """Never built."""


class NotAHandler:
    def run(self) -> None:
        """Has neither handle nor handle_batch."""


class CrashingClose:
    name = "crashing-close"

    def handle(self, receipt: Receipt) -> None:
        """Does nothing."""

    def close(self) -> None:
        raise OSError("disk gone")


READY_INSTANCE = Configurable("instance")
NOT_CALLABLE = 42

# --- loading ------------------------------------------------------------------------------


def test_the_built_in_handlers_are_available_as_entry_points() -> None:
    assert {"log", "jsonl", "redis-stream", "webhook"} <= set(available_handlers())
    assert available_handlers()["log"].group == GROUP


def test_a_handler_is_loaded_by_entry_point_name_for_all_types() -> None:
    routes = load_handlers([HandlerSpec("log", options={"fields": ["biz_id"]})])

    assert set(routes) == set(RECEIPT_CLASSES)  # IntlSmsReport included
    [log_handler] = {id(h): h for hs in routes.values() for h in hs}.values()
    assert isinstance(log_handler.target, LogHandler) and log_handler.name == "log"


def test_a_decorated_function_is_loaded_by_module_attr_with_its_own_types() -> None:
    routes = load_handlers([HandlerSpec(f"{HERE}:on_report")])

    assert {cls: [h.target for h in hs] for cls, hs in routes.items()} == {
        "SmsReport": [on_report]}


def test_a_plain_function_becomes_a_handler_for_all_types_named_after_it() -> None:
    routes = load_handlers([HandlerSpec(f"{HERE}:plain", types=("SmsUp", "SmsReport"))])

    assert set(routes) == {"SmsUp", "SmsReport"}
    [wrapped] = routes["SmsUp"]
    assert isinstance(wrapped.target, FunctionHandler) and wrapped.name == "plain"
    assert wrapped.target.__wrapped__ is plain


def test_a_class_is_built_with_the_options_and_the_spec_overrides_types_and_name() -> None:
    routes = load_handlers([
        HandlerSpec(f"{HERE}:Configurable", options={"label": "a", "repeat": 2}),
        HandlerSpec(f"{HERE}:Configurable", types=("SmsReport",), name="second",
                    options={"label": "b"}),
    ])

    [first] = routes["SmsUp"]
    [second] = routes["SmsReport"]
    assert isinstance(first.target, Configurable)
    assert (first.target.label, first.target.repeat) == ("a", 2)
    assert second.name == "second"
    CLOSED.clear()
    close_handlers(routes)
    assert sorted(CLOSED) == ["a", "b"]  # the renamed one forwards close()


def test_a_ready_instance_and_a_nameless_batch_class_are_accepted() -> None:
    routes = load_handlers([HandlerSpec(f"{HERE}:READY_INSTANCE"),
                            HandlerSpec(f"{HERE}:Nameless", types=("SmsReport",))])

    assert [h.target for h in routes["SmsUp"]] == [READY_INSTANCE]
    [nameless] = routes["SmsReport"]
    assert nameless.name == "Nameless"
    dispatcher = Dispatcher(routes, deadline_s=30)
    try:
        receipt = SmsReport(raw={}, meta=ReceiptMeta("mns"), phone_number="1", biz_id="b",
                            success=True)
        assert [o.kind for o in dispatcher.dispatch([receipt])] == ["ok"]
    finally:
        dispatcher.close()


# --- one-line errors ----------------------------------------------------------------------


def load_error(*specs: HandlerSpec) -> str:
    with pytest.raises(PluginError) as info:
        load_handlers(list(specs))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_an_unknown_entry_point_lists_the_available_ones() -> None:
    message = load_error(HandlerSpec("no-such-plugin"))

    assert message.startswith("unknown handler 'no-such-plugin'")
    available = message.split("available: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"jsonl", "log", "redis-stream", "webhook"} <= set(available)
    assert available == sorted(available)


def test_an_import_failure_names_the_module_and_the_exception() -> None:
    message = load_error(HandlerSpec("no_such_module_xyz.sub:thing"))

    assert message == ("cannot import module 'no_such_module_xyz.sub' for handler "
                       "'no_such_module_xyz.sub:thing': ModuleNotFoundError: No module named "
                       "'no_such_module_xyz'")


def test_a_module_that_crashes_on_import_is_reported(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crashy_plugin_mod.py").write_text("raise RuntimeError('bad\\nglobal state')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    message = load_error(HandlerSpec("crashy_plugin_mod:handler"))

    assert message.endswith("RuntimeError: bad global state")


def test_a_missing_attribute_is_reported() -> None:
    assert load_error(HandlerSpec(f"{HERE}:nope")) == (
        f"module '{HERE}' has no attribute 'nope' (handler '{HERE}:nope')")


def test_bad_options_report_the_type_error() -> None:
    message = load_error(HandlerSpec(f"{HERE}:Configurable", options={"lable": "typo"}))

    assert message.startswith(f"bad options for handler '{HERE}:Configurable' (Configurable): ")
    assert "unexpected keyword argument 'lable'" in message


def test_bad_options_of_a_built_in_handler_are_reported() -> None:
    message = load_error(HandlerSpec("jsonl", options={"paht": "/tmp/x"}))

    assert message.startswith("bad options for handler 'jsonl' (JsonLinesHandler): ")


def test_a_constructor_failure_is_reported() -> None:
    assert load_error(HandlerSpec(f"{HERE}:BrokenInit")) == (
        f"handler '{HERE}:BrokenInit' failed to start: ValueError: cannot reach the database")


@pytest.mark.parametrize(("use", "expected"), [
    (f"{HERE}:NotAHandler", "is not a handler: NotAHandler has neither"),
    (f"{HERE}:NOT_CALLABLE", "is not a handler: expected a function, a class"),
    (f"{HERE}:", "expected 'module:attr'"),
])
def test_something_that_is_not_a_handler_is_refused(use: str, expected: str) -> None:
    assert expected in load_error(HandlerSpec(use))


def test_options_for_a_function_are_refused() -> None:
    message = load_error(HandlerSpec(f"{HERE}:plain", options={"x": 1}))

    assert "takes no options (['x'] given)" in message


def test_unknown_message_types_are_refused() -> None:
    message = load_error(HandlerSpec("log", types=("SmsReprot",)))

    assert message.startswith("handler 'log': unknown or no receipt types ['SmsReprot']")
    assert "SmsReport" in message


def test_using_a_plugin_twice_needs_distinct_names() -> None:
    message = load_error(HandlerSpec("log"), HandlerSpec("log", types=("SmsUp",)))

    assert message == "handler name 'log' is used twice; give each use of 'log' its own `name`"
    routes = load_handlers([HandlerSpec("log"), HandlerSpec("log", name="log-2")])
    assert [h.name for h in routes["SmsUp"]] == ["log", "log-2"]


def test_handlers_built_before_a_failing_spec_are_closed() -> None:
    CLOSED.clear()

    load_error(HandlerSpec(f"{HERE}:Configurable", options={"label": "early"}),
               HandlerSpec("no-such-plugin"))

    assert CLOSED == ["early"]


def test_a_crash_in_close_is_logged_and_the_others_still_close() -> None:
    CLOSED.clear()
    routes = load_handlers([HandlerSpec(f"{HERE}:CrashingClose"),
                            HandlerSpec(f"{HERE}:Configurable", options={"label": "after"})])

    with capture_logs() as logs:
        close_handlers(routes)

    assert CLOSED == ["after"]
    [entry] = [e for e in logs if e["event"] == "handler_close_failed"]
    assert entry["handler"] == "crashing-close"


# --- the example plugin, installed with pip into a throwaway venv -----------------------

PROBE = textwrap.dedent("""
    import json, sys
    from consumer.handlers.plugins import available_handlers, load_handlers
    from consumer.settings import HandlerSpec
    from consumer.receipts import ReceiptMeta, SmsReport
    routes = load_handlers([HandlerSpec("example-print", types=("SmsReport",),
                                        options={"prefix": "PRINTED"})])
    [printer] = [h.target for h in routes["SmsReport"]]
    receipt = SmsReport(raw={}, meta=ReceiptMeta("mns", "q", "m-1", 1), phone_number="1381",
                        biz_id="b-1", success=True)
    printer.handle(receipt)
    module = sys.modules[type(printer).__module__]
    print(json.dumps({"available": sorted(available_handlers()), "file": module.__file__,
                      "module": module.__name__, "name": printer.name}))
""")


def _make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)],
                   check=True, capture_output=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # --system-site-packages reaches the base interpreter, not the venv these tests run in:
    # chain to the running environment's site-packages (with its .pth files, so the editable
    # alicom-receipts is found) the way a plugin is installed next to the daemon.
    parents = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    (Path(purelib) / "_alicom_parent_env.pth").write_text(lines)
    return python


def _ensure_wheel_building(python: Path) -> None:
    """setuptools < 70.1 needs the `wheel` package to build; --no-build-isolation won't fetch it."""
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('wheel') or " \
            "u.find_spec('setuptools.command.bdist_wheel') else 1)"
    if subprocess.run([str(python), "-c", probe], check=False).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "wheel"], check=True,
                       capture_output=True)


@pytest.mark.slow
def test_the_example_plugin_installs_with_pip_and_is_found_by_its_entry_point(
        tmp_path: Path) -> None:
    source = tmp_path / "example-plugin"
    shutil.copytree(EXAMPLE, source)  # pip builds in place: keep build/ out of the repo
    python = _make_venv(tmp_path / "venv")
    _ensure_wheel_building(python)

    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                              "--no-build-isolation", str(source)],
                             check=False, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    # The alicom-receipts under test is this checkout, whatever state the editable install of
    # the surrounding venv is in; the plugin itself can only come from the throwaway venv.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([str(python), "-c", PROBE], check=False, capture_output=True,
                           text=True, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr

    *printed, summary = probe.stdout.strip().splitlines()
    receipt = SmsReport(raw={}, meta=ReceiptMeta("mns", "q", "m-1", 1), phone_number="1381",
                        biz_id="b-1", success=True)
    assert printed == ["PRINTED SmsReport %s m-1" % dedup_key(receipt)]
    found = json.loads(summary)
    assert found["module"] == "alicom_example_plugin" and found["name"] == "example-print"
    assert Path(found["file"]).is_relative_to(tmp_path / "venv")  # the installed copy
    assert {"example-print", "log", "jsonl"} <= set(found["available"])
