"""The `clipwatch` command: it only parses arguments and picks a mode of `Service`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__, commands, daemoncalls
from .config import Config
from .config_loader import load_config
from .errors import ClipwatchError, ConfigError
from .logs import configure_logging
from .owner import become_owner
from .vocab import Decision, Status

DESCRIPTION = """\
clipwatch watches directories for images, embeds each new or changed image with a CLIP model
(sentence-transformers) in batches, and keeps one row per image, with its vector, in MySQL 9 or SQLite.

Configuration comes from a TOML file (--config, or $CLIPWATCH_CONFIG) and CLIPWATCH_<SECTION>__<KEY>
environment variables; every key is documented in config/clipwatch.example.toml.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipwatch", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipwatch {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH",
                        help="TOML configuration file (default: $CLIPWATCH_CONFIG; without either, "
                             "built-in defaults and environment variables only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground",
                   description="Watch the configured directories and ingest images until SIGTERM or SIGINT. "
                               "On start, every root is scanned and reconciled with the store. A first "
                               "signal finishes and commits the batch in hand, then exits 0; a second "
                               "exits at once.")
    sub.add_parser("scan", parents=[common], help="reconcile the directories with the store once, then exit",
                   description="Walk every watched root once: embed new and changed images, update moved "
                               "ones, remove rows whose file is gone (store.on_delete). Prints a progress "
                               "line on a terminal and a summary at the end. Safe to run while the daemon "
                               "runs on the same store.")
    search = sub.add_parser(
        "search", parents=[common], help="which stored images look like this one?",
        description="Rank the stored images (every instance sharing the table, configured model) by cosine "
                    "similarity to an image, a text description or a vector, best first. A daemon of the same "
                    "store and table running at metrics.listen answers at once (index and model loaded); "
                    "otherwise the vectors are loaded from the store, and the model for an image or a text.",
        epilog="examples:\n  clipwatch search upload.jpg\n  clipwatch search --text 'a red bicycle' --top 10\n"
               "  clipwatch search --vector '[0.012, -0.034, ...]' --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    what = search.add_mutually_exclusive_group(required=True)
    what.add_argument("image", nargs="?", metavar="IMAGE", help="an image file")
    what.add_argument("--text", metavar="TEXT", help="a description, embedded with CLIP's text tower")
    what.add_argument("--vector", metavar="JSON", help="a JSON list of numbers, or a .json file holding one")
    search.add_argument("--top", type=int, default=5, metavar="K", help="how many results (default 5)")
    search.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    search.add_argument("--local", action="store_true",
                        help="do not ask the running daemon (at metrics.listen); load the vectors from the store")
    compare = sub.add_parser(
        "compare", parents=[common], help="the similarity of two images or vectors",
        description="Print one number: how similar A and B are. Each is an image file, a JSON list of "
                    "numbers, or a .json file holding one (images are embedded with the configured model).")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")
    compare.add_argument("--metric", choices=("cosine", "dot", "euclidean"), default="cosine",
                         help="cosine similarity (default), raw dot product, or euclidean distance")
    hashes = sub.add_parser(
        "hash", parents=[common], help="the PDQ hash, MD5 and sha256 of image files",
        description="Print each file's PDQ hash (64 hex digits, Meta's format) and its quality (0-100), MD5 and "
                    "sha256, as the daemon stores them in the file's row. Exits 1 if a file could not be read "
                    "or decoded (the others are printed).")
    hashes.add_argument("files", nargs="+", metavar="FILE")
    hashes.add_argument("--json", action="store_true", help="JSON lines: path, pdq, quality, md5, sha256")
    imp = sub.add_parser(
        "import", parents=[common], help="store vectors computed elsewhere (JSON lines)",
        description='Read JSON lines {"path": "...", "embedding": [...], "model": "...", "sha256": "..."} '
                    "(model defaults to the configured one; sha256 is computed from the file when it is "
                    "here). Vectors are checked against the table's dimension, normalised, and judged for "
                    "duplicates and prohibited content like ingested images. A bad line is reported with "
                    "its number and skipped; the others are imported. Exits 1 if any line was bad.")
    imp.add_argument("file", metavar="FILE", help="the JSON-lines file, or - for standard input")
    sub.add_parser("health", parents=[common], help="is the running daemon healthy? (exit 0 if so)",
                   description="Ask the daemon at metrics.listen for /healthz. Exits 0 when its worker loop "
                               "ticked recently, its store answers and its watches run; exits 1 with the "
                               "reason otherwise (or when no daemon answers). For Docker's HEALTHCHECK and "
                               "monitoring scripts.")
    db = sub.add_parser("db", help="database commands (init, status)",
                        description="Create the table or show what the store holds.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    init = db_sub.add_parser("init", parents=[common], help="create the table if it does not exist",
                             description="Create store.table with a VECTOR column sized for the model. "
                                         "Without --dimension the model is loaded to find its dimension.")
    init.add_argument("--dimension", type=int, metavar="N",
                      help="vector dimension (512 for clip-ViT-B-32), to skip loading the model")
    db_status = db_sub.add_parser("status", parents=[common], help="rows by status and model, dimension, store",
                               description="Show where the store is, the table's vector dimension and "
                                           "how many rows it holds by status and model.")
    db_status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _review_parsers(sub, common)
    calibrate = sub.add_parser(
        "calibrate", parents=[common], help="the threshold the decisions people took suggest",
        description="From confirmed (right) and dismissed (false alarm) verdicts, and labelled pairs given with "
                    "--pairs: precision and recall at each threshold, the histogram of similarities with the "
                    "decisions, and the lowest threshold whose precision reaches calibration.target_precision "
                    "(and stays there above it). Changes nothing: copy the number into the configuration.")
    calibrate.add_argument("--for", dest="target", choices=("duplicates", "pdq", "prohibited", "bank"),
                           default="duplicates",
                           help="duplicates.threshold (default), duplicates.pdq_distance (from the PDQ hashes of "
                                "the decided pairs' files still stored), prohibited.image_threshold or "
                                "prohibited.bank_distance (decided hash-list matches, their files' stored PDQ)")
    calibrate.add_argument("--pairs", metavar="FILE.csv",
                           help="path_a,path_b,same lines (same: 1 or 0), embedded with the configured model")
    calibrate.add_argument("--json", action="store_true",
                           help="JSON: decisions, positives, negatives, suggested_threshold, curve, histogram, needs")
    _bank_parsers(sub, common)
    user = sub.add_parser("user", help="users of the review pages and search (http.users_file)",
                          description="Manage the htpasswd file named by http.users_file.")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="SUBCOMMAND")
    add = user_sub.add_parser("add", parents=[common], help="add a user, or set their password",
                              description="Ask for a password (twice, not echoed) or read one line from standard "
                                          "input (--password-stdin), and write NAME:BCRYPT-HASH into "
                                          "http.users_file (created readable by its owner only; the daemon "
                                          "re-reads it, no restart needed).")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    return parser


def _bank_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    bank = sub.add_parser("bank", help="hash lists of prohibited images (prohibited.bank_dir)",
                          description="The hash lists in prohibited.bank_dir. Exit codes: 0 done (check: nothing "
                                      "matched), 1 a file or bank could not be read, 2 usage or configuration, "
                                      "3 (check) a file matched a bank.")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True, metavar="SUBCOMMAND")
    listing = bank_sub.add_parser("list", parents=[common], help="banks, their hashes by signal, problems",
                                  description="Each bank: hashes by signal, malformed lines, when its file changed "
                                              "and when this data_dir's daemon last checked its stored rows "
                                              "against it. Exits 1 when a bank has a problem.")
    add = bank_sub.add_parser("add", parents=[common], help="hash images into a bank file",
                              description="Hash images you are allowed to hold into the bank NAME "
                                          "(<bank_dir>/NAME.txt, created if missing; atomic write): a pdq line "
                                          "where the hash is usable, an md5 line always. A running daemon picks "
                                          "it up at its next refresh and checks the stored rows against it.")
    add.add_argument("name", metavar="NAME")
    check = bank_sub.add_parser("check", parents=[common], help="which banks image files match, and how closely",
                                description="Hash each file as the daemon does and print every bank it matches "
                                            "(signal, PDQ bits). Exits 3 when a file matched.")
    for command in (add, check):
        command.add_argument("files", nargs="+", metavar="FILE")
    for command in (listing, add, check):
        command.add_argument("--json", action="store_true", help="JSON lines, one per bank or file")


def _review_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    verdicts = sub.add_parser(
        "verdicts", parents=[common], help="list the images flagged as duplicate or prohibited, newest first",
        description="List the rows judged duplicate or prohibited (every instance sharing the table), newest "
                    "first, with what each matched. `clipwatch dismiss ID` overrules a verdict for good.")
    verdicts.add_argument("--status", choices=[Status.DUPLICATE, Status.PROHIBITED], help="only this verdict")
    verdicts.add_argument("--json", action="store_true",
                          help="JSON lines: id, path, status, match_id, match_path, score, label, instance, flagged_at")
    verdicts.add_argument("--limit", type=int, default=0, metavar="N", help="at most N rows (default: all)")
    for name, decision, text in (
            ("dismiss", Decision.DISMISSED,
             "Record that these verdicts are false alarms: each row becomes ok, and the same pair of files (by "
             "content: the two files' sha256, or the file's sha256 and the reference's label) is never flagged "
             "again, by any daemon sharing the table, whatever happens to the files. A different match can still "
             "flag them."),
            ("confirm", Decision.CONFIRMED,
             "Record that these verdicts are right (kept for threshold calibration); the rows do not change.")):
        command = sub.add_parser(name, parents=[common], help=text.split(":")[0].split(" (")[0].lower(),
                                 description=text + " Prints what changed; exits 1 naming an unknown id, "
                                                    "changing nothing.")
        command.add_argument("ids", nargs="+", type=int, metavar="ID", help="row ids (`clipwatch verdicts`)")
        command.add_argument("--by", metavar="NAME", help="who decides (default: user@host)")
        command.set_defaults(decision=decision)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.log.format, config.log.level, sys.stdout if args.command == "run" else sys.stderr)
        if args.command != "user":  # every other command uses the data directory: as its owner (owner.py)
            config = become_owner(config)
        return _dispatch(config, args)
    except ConfigError as exc:
        print(f"clipwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    except ClipwatchError as exc:
        print(f"clipwatch: {exc}", file=sys.stderr)
        return 1


def _dispatch(config: Config, args: argparse.Namespace) -> int:
    run: dict[str, Callable[[], int]] = {
        "run": lambda: commands.cmd_run(config),
        "scan": lambda: commands.cmd_scan(config),
        "search": lambda: commands.cmd_search(config, args),
        "compare": lambda: commands.cmd_compare(config, args.a, args.b, args.metric),
        "hash": lambda: commands.cmd_hash(config, args.files, args.json),
        "import": lambda: commands.cmd_import(config, args.file),
        "health": lambda: daemoncalls.cmd_health(config),
        "verdicts": lambda: commands.cmd_verdicts(config, args.status, args.json, args.limit),
        "dismiss": lambda: commands.cmd_decide(config, args.ids, args.decision, args.by),
        "confirm": lambda: commands.cmd_decide(config, args.ids, args.decision, args.by),
        "calibrate": lambda: commands.cmd_calibrate(config, args.target, args.pairs, args.json),
        "user": lambda: commands.cmd_user_add(config, args.name, args.password_stdin),
        "bank": lambda: _bank(config, args),
    }
    if args.command in run:
        return run[args.command]()
    if args.db_command == "init":
        return commands.cmd_db_init(config, args.dimension)
    return commands.cmd_db_status(config, args.json)


def _bank(config: Config, args: argparse.Namespace) -> int:
    from . import bankcmd

    if args.bank_command == "list":
        return bankcmd.cmd_bank_list(config, args.json)
    if args.bank_command == "add":
        return bankcmd.cmd_bank_add(config, args.name, args.files, args.json)
    return bankcmd.cmd_bank_check(config, args.files, args.json)


if __name__ == "__main__":
    sys.exit(main())
