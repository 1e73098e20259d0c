"""`kaizen keys`: create, list and revoke API keys in the keys file (`auth.keys_file`, default
<home>/keys.json).

The file holds each key's SHA-256 digest, its scopes, a name and (for `review` keys) the
reviewer, never the key: `create` prints the key once. Running gateways and the controller
re-read the file within a second of a change (kaizenlm.auth.Keyring), so a new key works and a
revoked one stops working without a restart. With several machines, every gateway and the
controller must read the same file (a shared path, or a copy each time it changes).
"""

from __future__ import annotations

import sys

import orjson

from kaizenlm import auth
from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "create, list and revoke API keys (scopes chat, ingest, feedback, review, admin) in the keys file"
EXAMPLE = ('kaizen keys create --scope feedback --name "shop widget"   '
           "(then: kaizen keys list; kaizen keys revoke k-1a2b3c4d)")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="make a new key and print it (once: only its digest is stored)",
                       epilog="Example: kaizen keys create --scope review --reviewer alice --name 'alice (annotation)'")
    c.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                   help=f"a scope of the key, repeatable: {', '.join(auth.SCOPES)} "
                        "(a server key: --scope chat --scope ingest --scope feedback; a widget key: --scope feedback)")
    c.add_argument("--name", default="", help="what the key is for, shown by `list` (e.g. 'shop widget')")
    c.add_argument("--reviewer", help="the reviewer the key belongs to (required with --scope review)")
    c.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    ls = sub.add_parser("list", help="list the keys (ids, names, scopes, reviewers, dates; never the keys)",
                        epilog="Example: kaizen keys list --all")
    ls.add_argument("--all", action="store_true", help="also revoked keys")
    ls.add_argument("--json", action="store_true", help="print JSON")
    r = sub.add_parser("revoke", help="revoke a key by its id (it stops working within a second)",
                       epilog="Example: kaizen keys revoke k-1a2b3c4d")
    r.add_argument("key_id", help="the id `kaizen keys list` shows, e.g. k-1a2b3c4d")


def run(args, cfg) -> int:
    path = cfg.keys_file
    try:
        if args.action == "create":
            return _create(args, path)
        if args.action == "list":
            return _list(args, path)
        record = auth.revoke_key(path, args.key_id.strip())
    except (ValueError, LookupError) as e:  # KeysFileError is a ValueError
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    print(f"revoked {record['id']} ({record.get('name') or 'no name'}) at {record['revoked_at']}; "
          "gateways and the controller refuse it within a second")
    return 0


def _create(args, path) -> int:
    key, record = auth.create_key(path, [s.strip() for s in args.scope], args.name.strip(), args.reviewer)
    if args.json:
        sys.stdout.write(orjson.dumps({"key": key, **record}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(key)
    who = f", reviewer {record['reviewer']}" if record["reviewer"] else ""
    print(f"created {record['id']} with scopes {', '.join(record['scopes'])}{who} in {path}", file=sys.stderr)
    print("this is the only time the key is shown: store it now (the file keeps only its SHA-256)", file=sys.stderr)
    return 0


def _list(args, path) -> int:
    rows = [r for r in auth.read_keys_file(path) if args.all or r.get("revoked_at") is None]
    if args.json:
        shown = [{k: v for k, v in r.items() if k != "sha256"} for r in rows]
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print(f"no keys in {path} (besides the config's); create one with `kaizen keys create --scope feedback`")
        return 0
    print(f"{'id':<12} {'scopes':<30} {'reviewer':<12} {'created':<26} {'revoked':<26} name")
    for r in rows:
        print(f"{r['id']:<12} {','.join(r['scopes']):<30} {r.get('reviewer') or '-':<12} {r.get('created_at', ''):<26} "
              f"{r.get('revoked_at') or '-':<26} {r.get('name') or ''}")
    return 0


KEYS = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
