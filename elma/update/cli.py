"""``elma keys``, ``elma publish`` and ``elma update``: the sub-commands of signed model updates (see docs/updates.md).

    elma keys generate root.key                     # a private key file (0600); prints its key id
    elma keys init --repo DIR --root-key root.key --release-key release.key
    elma keys rotate --repo DIR --root-key root.key [--new-root-key new-root.key] [--release-key new-release.key]
    elma publish BUNDLE --repo DIR --key release.key [--finetune-report R.json] [--expires-days 30]
    elma publish --refresh --repo DIR --key release.key       # re-sign the newest release (new expiry)
    elma update --trust-root 1.root.json [--models-dir D]      # once, when the device is provisioned
    elma update --server URL --token-file F [--models-dir D]
    elma update --rollback [--models-dir D]

Exit codes: 0 done (also "up to date"), 2 usage (an output already there), 3 a refused or failed update (one
line; the installed model untouched). Only the standard library is imported at module level.
"""

from pathlib import Path
from typing import List, Tuple

from elma.errors import UpdateError, UsageError


def add_keys(sub) -> None:
    p = sub.add_parser("keys", help="signing keys and the root of trust of a release repository")
    ks = p.add_subparsers(dest="keys_command")
    ks.required = True  # add_subparsers(required=) is 3.7+
    g = ks.add_parser("generate", help="write a new Ed25519 private key file (mode 0600)")
    g.add_argument("key_file")
    g.add_argument("--overwrite", action="store_true", help="replace an existing key file (its key is lost)")
    g.set_defaults(func=cmd_keys_generate)
    i = ks.add_parser("init", help="create a release repository: root version 1 (give devices its file)")
    i.add_argument("--repo", required=True)
    i.add_argument("--root-key", required=True, help="private root key file (keep it offline)")
    i.add_argument("--release-key", required=True, help="private key file that will sign releases")
    i.add_argument("--expires-days", type=float, default=365.0, help="root metadata lifetime (default 365)")
    i.set_defaults(func=cmd_keys_init)
    r = ks.add_parser("rotate", help="new root version: replace the root and/or release key (signed by old and new root)")
    r.add_argument("--repo", required=True)
    r.add_argument("--root-key", required=True, help="the current root key")
    r.add_argument("--new-root-key", help="the root key from now on (default: keep the current one)")
    r.add_argument("--release-key", required=True, help="the release key from now on (may be the current one)")
    r.add_argument("--expires-days", type=float, default=365.0)
    r.set_defaults(func=cmd_keys_rotate)


def cmd_keys_generate(args) -> int:
    from elma.update.signing import generate_key

    key = generate_key(Path(args.key_file), overwrite=args.overwrite)
    print(f"wrote {args.key_file} (private, mode 0600); key id {key.keyid}, public key {key.public_hex}")
    return 0


def cmd_keys_init(args) -> int:
    from elma.update.publish import init_repo
    from elma.update.signing import load_private_key

    path = init_repo(Path(args.repo), load_private_key(Path(args.root_key)), load_private_key(Path(args.release_key)),
                     args.expires_days)
    print(f"wrote {path}; install it on each device once: elma update --trust-root {path.name}")
    return 0


def cmd_keys_rotate(args) -> int:
    from elma.update.publish import rotate
    from elma.update.signing import load_private_key

    new_root = load_private_key(Path(args.new_root_key)) if args.new_root_key else None
    path = rotate(Path(args.repo), load_private_key(Path(args.root_key)), new_root,
                  load_private_key(Path(args.release_key)), args.expires_days)
    print(f"wrote {path}; now re-sign the newest release: elma publish --refresh --repo {args.repo} "
          f"--key {args.release_key}")
    return 0


def add_publish(sub) -> None:
    p = sub.add_parser("publish", help="sign a bundle into a release repository as its next release")
    p.add_argument("bundle", nargs="?", help="bundle folder (elma export; calibrated or not)")
    p.add_argument("--repo", required=True, help="release repository (elma keys init)")
    p.add_argument("--key", required=True, help="private release key file")
    p.add_argument("--expires-days", type=float, default=30.0, help="after this, devices refuse the release unless it "
                   "is re-signed with --refresh (default 30)")
    p.add_argument("--finetune-report", help="finetune_report.json of `elma finetune`: its held-out scores are signed in")
    p.add_argument("--health-data", help="SQuAD file whose first --health-questions questions are the canned health "
                   "check (default: three built-in questions)")
    p.add_argument("--health-questions", type=int, default=3)
    p.add_argument("--min-elma-version", help="oldest elma that may install it (default: this elma's version)")
    p.add_argument("--refresh", action="store_true", help="re-sign the newest release with a new expiry (no BUNDLE)")
    p.set_defaults(func=cmd_publish)


def _health_questions(path: str, count: int) -> List[Tuple[str, str]]:
    from elma.data.squad import load_squad

    if count < 1:
        raise UsageError(f"--health-questions must be at least 1 (got {count})")
    return [(ex.question, ex.context) for ex in load_squad(Path(path), check_offsets=False)[:count]]


def cmd_publish(args) -> int:
    from elma.update.publish import publish, refresh, scores_from_report
    from elma.update.signing import load_private_key

    if args.expires_days <= 0:
        raise UsageError(f"--expires-days must be positive (got {args.expires_days})")
    key = load_private_key(Path(args.key))
    if args.refresh:
        if args.bundle:
            raise UsageError("--refresh re-signs the newest release: give no BUNDLE")
        r = refresh(Path(args.repo), key, args.expires_days)
        print(f"re-signed release {r.version} of {args.repo}; expires in {args.expires_days:g} days")
        return 0
    if not args.bundle:
        raise UsageError("give the BUNDLE to publish (or --refresh)")
    scores = scores_from_report(Path(args.finetune_report)) if args.finetune_report else None
    questions = _health_questions(args.health_data, args.health_questions) if args.health_data else ()
    r = publish(Path(args.repo), Path(args.bundle), key, args.expires_days, scores, questions, args.min_elma_version)
    print(f"published release {r.version}: {r.files} files, {r.total_bytes / 1e6:.1f} MB, in {r.path}")
    return 0


def add_update(sub) -> None:
    p = sub.add_parser("update", help="install the newest signed release from the server (atomic, rollback-safe)")
    p.add_argument("--server", help="server URL (elma-serve --releases), e.g. http://10.0.0.2:8000")
    p.add_argument("--token-file", help="file holding this device's bearer token")
    p.add_argument("--models-dir", help="default: $ELMA_MODELS_DIR, else ~/.local/share/elma/models")
    p.add_argument("--rollback", action="store_true", help="return to the previous release (the current one is "
                   "marked bad and not installed again)")
    p.add_argument("--trust-root", metavar="ROOT.json", help="install the root of trust (the repository's "
                   "root/1.root.json, brought over a trusted channel) and exit")
    p.add_argument("--health-backend", choices=("onnxruntime", "tensorrt"), help="backend of the health check "
                   "(default onnxruntime)")
    p.add_argument("--overwrite", action="store_true", help="with --trust-root: replace the device's root of trust")
    p.set_defaults(func=cmd_update)


def cmd_update(args) -> int:
    from elma.paths import default_models_dir
    from elma.update.store import ModelStore

    store = ModelStore(Path(args.models_dir) if args.models_dir else default_models_dir())
    if args.trust_root:
        from elma.update.metadata import load_trusted_root

        try:
            data = Path(args.trust_root).read_bytes()
        except OSError as err:
            raise UsageError(f"{args.trust_root}: cannot read it ({err.strerror})") from err
        root = load_trusted_root(data, args.trust_root)
        store.save_root(data, overwrite=args.overwrite)
        print(f"installed root version {root.version} as the root of trust of {store.root}")
        return 0
    if args.rollback:
        if not store.root.is_dir():
            raise UpdateError(f"{store.root}: no such models folder; nothing to roll back")
        with store.lock():
            version = store.rollback()
        print(f"rolled back: release {version} is current in {store.root}")
        return 0
    if not args.server or not args.token_file:
        raise UsageError("elma update needs --server URL and --token-file FILE (or --rollback, --trust-root)")
    from elma.errors import OffloadError
    from elma.offload.client import read_token_file
    from elma.update.updater import UpdateConfig, update

    try:
        token = read_token_file(args.token_file)
    except OffloadError as err:
        raise UsageError(str(err)) from err
    installed = store.current_version() if (store.root / "current").is_symlink() else None
    try:
        r = update(UpdateConfig(args.server, token, str(store.root), args.health_backend))
    except UpdateError as err:
        kept = f"release {installed} stays installed" if installed is not None else "nothing was installed"
        raise type(err)(f"{err}; {kept} (unchanged)") from err
    except ValueError as err:
        raise UsageError(str(err)) from err
    messages = {"installed": f"installed release {r.version} (previous {r.previous})",
                "up-to-date": f"up to date: release {r.version}",
                "bad": f"release {r.offered} is marked bad; release {r.version} stays (waiting for a newer one)",
                "no-release": "the server has no release yet"}
    print(f"{messages[r.status]}; {r.bytes_received} bytes received in {r.wall_s:.1f} s")
    return 0
