"""`alicom-receipts` command line: one sub-command per job, each in its own module.

Argument parsing lives with the code it drives; this module only routes, so that importing
the CLI stays cheap and a sub-command's dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from consumer._version import __version__
from consumer.cli.runner import run_command
from consumer.errors import EXIT_CONFIG
from consumer.settings import did_you_mean

#: sub-command -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "worker": ("consumer.cli.worker", "main", "run one worker process for one queue type"),
    "dead-letters": ("consumer.cli.dead_letters", "main",
                     "list, show, replay or purge dead letters"),
    "sandbox": ("alicom_sandbox.server", "main",
                "run the local Alicom sandbox (MNS + token API); `sandbox publish` sends receipts"),
    "run": ("consumer.cli.run", "main",
            "run the configured worker processes (no systemd): restart, drain, exit"),
    "check": ("consumer.cli.check", "main", "check config, plugins, Redis, token and queues"),
    "push-server": ("consumer.cli.push", "server_main",
                    "receive the platform's HTTP batch pushes"),
    "push-worker": ("consumer.cli.push", "worker_main",
                    "drain pushed receipts through dedup, handlers and dead letters"),
    "reconcile": ("consumer.cli.reconcile", "main",
                  "recover lost receipts with QuerySendDetails"),
    "stats": ("consumer.cli.stats", "main", "delivery success rate and failure codes"),
    "demo": ("consumer.cli.demo", "main", "the whole loop locally: sandbox, publisher, worker"),
    "files": ("consumer.cli.files", "main",
              "where the shipped systemd units, installer and example config are"),
    "numbers": ("consumer.cli.numbers", "main",
                "numbers not to send to: check, list, export, add, remove"),
    "tasks": ("consumer.cli.tasks", "main", "send tasks: counts, failure reasons, CSV export"),
    "reviews": ("consumer.cli.reviews", "main", "review state of signatures and templates"),
    "dashboard": ("consumer.cli.dashboard", "main",
                  "a read-only report page: rates, failures, tasks, numbers, reviews"),
}


def _usage() -> str:
    lines = ["usage: alicom-receipts [--version] <command> [options]", "", "commands:"]
    lines += ["  %-14s %s" % (name, spec[2]) for name, spec in COMMANDS.items()]
    lines += ["", "`alicom-receipts <command> --help` for a command's options.",
              "Exit status: 0 ok, 1 failed, 2 usage or configuration error, 3 Redis did not "
              "answer (stats, numbers, tasks, reviews), 75 temporary start-up failure (try again "
              "later)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else EXIT_CONFIG
    if args[0] in {"-V", "--version"}:
        print("alicom-receipts %s" % __version__)
        return 0
    name, rest = args[0], args[1:]
    if name == "sandbox" and rest[:1] == ["publish"]:
        module, func = "alicom_sandbox.publisher", "main"
        rest = rest[1:]
    elif name in COMMANDS:
        module, func = COMMANDS[name][:2]
    else:
        hint = did_you_mean(name, [*COMMANDS, "sandbox publish"])
        print("alicom-receipts: unknown command %r%s\n\n%s" % (name, hint, _usage()),
              file=sys.stderr)
        return EXIT_CONFIG
    entry = getattr(importlib.import_module(module), func)
    return run_command("alicom-receipts %s" % name, lambda: entry(rest))


if __name__ == "__main__":
    sys.exit(main())
