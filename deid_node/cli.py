"""Command line: ``deid-node serve | deidentify | audit | crosswalk | pseudonyms | status |
quarantine | verify``."""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

from deid_node.audit import EVENT_KINDS, AuditEvent, AuditLog, render_json, render_table
from deid_node.config import Config, ConfigError, load_config
from deid_node.logs import configure_logging, get_logger
from deid_node.secrets_store import KeyFileError

DEFAULT_CONFIG = "node.toml"


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# -- serve --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from deid_node.pipeline.node import Node

    config = _load(args)
    configure_logging(config.node.log_level)
    node = Node(config)
    node.start()

    def _stop(signum: int, _frame: object) -> None:
        get_logger("deid_node.cli").info("signal", signal=signal.Signals(signum).name)
        node.request_stop()  # the stop itself runs below, outside the handler

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.wait()
    node.stop()
    return 0


# -- deidentify (batch) -----------------------------------------------------------


def _iter_files(src: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def _publish(tmp: Path, sop_uid: str) -> Path:
    """Give ``tmp`` its final name ``<SOP Instance UID>.dcm`` without overwriting.

    Two inputs can share a SOP Instance UID (a re-sent or re-processed image);
    the second becomes ``<uid>-2.dcm`` and so on. os.link fails if the name is
    taken, so concurrent workers never overwrite each other either.
    """
    for n in range(1, 10_000):
        final = tmp.with_name(f"{sop_uid}.dcm" if n == 1 else f"{sop_uid}-{n}.dcm")
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        tmp.unlink()
        return final
    raise FileExistsError(f"too many files named {sop_uid}")


def _batch_task(pairs: list[tuple[str, str]]) -> list[tuple[str, object]]:
    from deid_node.pipeline import worker

    state = worker._state()
    out = []
    for src, dst in pairs:
        outcome = worker.deidentify_file(state, Path(src), Path(dst))
        if outcome.ok:
            _publish(Path(dst), outcome.sop_uid[1])
        out.append((src, outcome))
    worker.record_outcome_uids(state, [o for _, o in out])
    return out


def cmd_deidentify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deid_node.pipeline import worker
    from deid_node.pipeline.node import prepare_data_dir
    from deid_node.registry.store import open_registry

    config = _load(args)
    configure_logging(config.node.log_level)
    src = Path(args.src)
    out = Path(args.output)
    if not src.is_dir():
        print(f"deid-node: {src} is not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    prepare_data_dir(config)
    open_registry(config.registry_url).dispose()
    audit = AuditLog(config.audit_url)
    files = list(_iter_files(src))
    pairs = [(str(p), str(out / f".{uuid.uuid4().hex}.dcm")) for p in files]
    chunks = [pairs[i : i + 8] for i in range(0, len(pairs), 8)]
    jobs = args.jobs if args.jobs is not None else max(1, config.node.workers)
    failed = 0
    with (
        ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=get_context("spawn"),
            initializer=worker.init_worker,
            initargs=(config,),
        ) as pool,
        tqdm(total=len(files), unit="file", disable=args.quiet) as bar,
    ):
        for results in pool.map(_batch_task, chunks):
            events = []
            for path, outcome in results:
                if outcome.ok:  # type: ignore[attr-defined]
                    o = outcome
                    events.append(
                        AuditEvent(
                            kind="deidentified",
                            calling_ae="(batch)",
                            patient_id_old=o.patient_id_old,  # type: ignore[attr-defined]
                            patient_id_new=o.patient_id_new,  # type: ignore[attr-defined]
                            study_uid_old=o.study_uid[0],  # type: ignore[attr-defined]
                            study_uid_new=o.study_uid[1],  # type: ignore[attr-defined]
                            sop_uid_old=o.sop_uid[0],  # type: ignore[attr-defined]
                            sop_uid_new=o.sop_uid[1],  # type: ignore[attr-defined]
                        )
                    )
                else:
                    failed += 1
                    rel = os.path.relpath(path, src)
                    bar.write(f"skipped {rel}: {outcome.reason}")  # type: ignore[attr-defined]
            audit.record(events)
            bar.update(len(results))
    for p in out.glob(".*.dcm"):
        p.unlink(missing_ok=True)
    audit.dispose()
    print(f"{len(files) - failed} de-identified, {failed} skipped, written to {out}")
    return 1 if failed and args.strict else 0


# -- audit --------------------------------------------------------------------------


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use ISO 8601, e.g. 2026-11-22 or 2026-11-22T10:30"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args)
    if not (config.data_dir / "audit.sqlite").exists():
        print(f"deid-node: no audit store in {config.data_dir} yet", file=sys.stderr)
        return 1
    audit = AuditLog(config.audit_url)
    found = audit.query(
        patient=args.patient,
        study=args.study,
        kinds=args.kind or (),
        since=args.since,
        until=args.until,
        job_id=args.job,
        limit=args.limit,
    )
    audit.dispose()
    print(render_json(found) if args.json else render_table(found))
    return 0


# -- crosswalk ----------------------------------------------------------------------


def cmd_crosswalk(args: argparse.Namespace) -> int:
    from deid_node.registry.store import crosswalk_rows, open_registry

    config = _load(args)
    engine = open_registry(config.registry_url)
    target = sys.stdout if args.output == "-" else None
    count = 0
    if target is None:
        fd = os.open(args.output, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # the mode above applies only to a new file
        handle = os.fdopen(fd, "w", newline="", encoding="utf-8")
    else:
        handle = target
    try:
        writer = csv.writer(handle)
        writer.writerow(["id_old", "id_new"])
        for old, new in crosswalk_rows(engine, args.kind):
            writer.writerow([old, new])
            count += 1
    finally:
        if target is None:
            handle.close()
        engine.dispose()
    if target is None:
        print(f"{count} {args.kind} written to {args.output}", file=sys.stderr)
    return 0


# -- pseudonyms ----------------------------------------------------------------------


def cmd_pseudonyms_import(args: argparse.Namespace) -> int:
    from deid_node.registry.store import (
        PseudonymImportError,
        import_pseudonyms,
        open_registry,
        read_pseudonym_csv,
    )

    config = _load(args)
    try:
        rows = read_pseudonym_csv(Path(args.file))
    except PseudonymImportError as exc:
        for line in exc.errors:
            print(f"deid-node: {args.file}: {line}", file=sys.stderr)
        print("deid-node: nothing imported", file=sys.stderr)
        return 2
    # A running node may be using data_dir: create it if need be, touch nothing else.
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = open_registry(config.registry_url)
    try:
        imported, skipped = import_pseudonyms(
            engine,
            rows,
            min_offset_days=config.deid.date_shift_min_days,
            max_offset_days=config.deid.date_shift_max_days,
        )
    except PseudonymImportError as exc:
        for line in exc.errors:
            print(f"deid-node: {args.file}: {line}", file=sys.stderr)
        print("deid-node: nothing imported", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"{imported} imported, {skipped} skipped (already in the registry)")
    return 0


# -- status -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from deid_node.pipeline.queue import JobQueue

    config = _load(args)
    if not (config.data_dir / "queue.sqlite").exists():
        print(f"deid-node: no queue in {config.data_dir} yet", file=sys.stderr)
        return 1
    queue = JobQueue(config.queue_url)
    for state, n in queue.counts().items():
        print(f"{state:14} {n}")
    queue.dispose()
    return 0


# -- quarantine ---------------------------------------------------------------------


def cmd_quarantine(args: argparse.Namespace) -> int:
    from deid_node.pipeline import quarantine

    config = _load(args)
    if not (config.data_dir / "queue.sqlite").exists():
        print(f"deid-node: no queue in {config.data_dir} yet", file=sys.stderr)
        return 1
    with quarantine.Quarantine(config) as store:
        return quarantine.run_command(
            store,
            args.quarantine_command,
            job_ids=getattr(args, "jobs", None) or [getattr(args, "job", None)],
            every=getattr(args, "all", False),
            older_than=getattr(args, "older_than", None),
            as_json=getattr(args, "json", False),
        )


# -- verify -------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from deid_node.verify import RegistryMissing, render_json, render_table, verify_folders

    config = _load(args)
    for folder in (args.original, args.output):
        if not Path(folder).is_dir():
            print(f"deid-node: {folder} is not a folder", file=sys.stderr)
            return 2
    url = make_url(config.registry_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        print(f"deid-node: no registry at {url.database}", file=sys.stderr)
        return 2
    try:
        report = verify_folders(
            Path(args.original),
            Path(args.output),
            config.registry_url,
            config.deid.options_in_force,
        )
    except RegistryMissing as exc:
        print(f"deid-node: {exc}", file=sys.stderr)
        return 2
    print(render_json(report) if args.json else render_table(report))
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deid-node",
        description="DICOM node that de-identifies images on their way to research.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-c", "--config", default=DEFAULT_CONFIG, help="configuration file (node.toml)"
        )
        return p

    p = add("serve", "run the node: receive, de-identify, forward")
    p.set_defaults(func=cmd_serve)

    p = add("deidentify", "de-identify a folder of DICOM files on disk")
    p.add_argument("src", help="folder with DICOM files (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="folder for the de-identified files")
    p.add_argument("-j", "--jobs", type=int, help="worker processes (default: [node] workers)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 if any file could not be de-identified"
    )
    p.set_defaults(func=cmd_deidentify)

    p = add("audit", "query the audit log")
    p.add_argument("--patient", help="original patient ID or pseudonym")
    p.add_argument("--study", help="study instance UID, original or new")
    p.add_argument("--kind", action="append", choices=EVENT_KINDS, help="event kind (repeatable)")
    p.add_argument("--since", type=_when, help="from this time (ISO 8601, UTC unless given)")
    p.add_argument("--until", type=_when, help="up to this time (ISO 8601)")
    p.add_argument("--job", type=int, help="one job id")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many events")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_audit)

    p = add("crosswalk", "export the registry's mapping as CSV (id_old,id_new)")
    p.add_argument("kind", choices=("uids", "patients"))
    p.add_argument("-o", "--output", required=True, help="CSV file to write, or - for stdout")
    p.set_defaults(func=cmd_crosswalk)

    p = sub.add_parser(
        "pseudonyms",
        help="manage the pseudonym table",
        description="manage the registry's pseudonym table",
    )
    psub = p.add_subparsers(dest="pseudonyms_command", required=True)
    p = psub.add_parser(
        "import",
        help="import a CSV table of original IDs and pseudonyms",
        description=(
            "import a CSV table with a header: original_id, pseudonym, and optionally "
            "name, issuer, date_offset_days"
        ),
    )
    p.add_argument("file", help="CSV file")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="configuration file (node.toml)")
    p.set_defaults(func=cmd_pseudonyms_import)

    p = add("status", "show how many jobs are in each state")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "quarantine",
        help="list, show, retry or purge quarantined jobs",
        description="list, show, retry or purge quarantined jobs",
    )
    qsub = p.add_subparsers(dest="quarantine_command", required=True)

    def qadd(name: str, help_text: str) -> argparse.ArgumentParser:
        qp = qsub.add_parser(name, help=help_text, description=help_text)
        qp.add_argument(
            "-c", "--config", default=DEFAULT_CONFIG, help="configuration file (node.toml)"
        )
        qp.set_defaults(func=cmd_quarantine)
        return qp

    qp = qadd("list", "quarantined jobs: stage, time and reason")
    qp.add_argument("--json", action="store_true", help="JSON instead of a table")
    qp = qadd("show", "one job: stage, reason, times, file")
    qp.add_argument("job", type=int, help="job id")
    qp.add_argument("--json", action="store_true", help="JSON instead of text")
    qp = qadd("retry", "send jobs back to the stage they failed in")
    qp.add_argument("jobs", type=int, nargs="*", help="job ids")
    qp.add_argument("--all", action="store_true", help="every quarantined job")
    qp = qadd("purge", "delete quarantined files and mark their jobs purged")
    qp.add_argument("jobs", type=int, nargs="*", help="job ids")
    qp.add_argument(
        "--older-than", type=float, metavar="DAYS", help="every job quarantined DAYS or more ago"
    )

    p = add("verify", "check de-identified files against their originals")
    p.add_argument("original", help="folder with the original files (searched recursively)")
    p.add_argument("output", help="folder with the de-identified files (searched recursively)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, KeyFileError) as exc:
        print(f"deid-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
