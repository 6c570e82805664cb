"""``mrq cache``: where the simulator's compiled code is cached, how big it is, and clearing it."""
import os
import time

INFO_EXAMPLES = """\
The kernel cache holds one entry per version of the simulator's sources and kernel path
(vnni or portable); the entry these sources use is marked '*'. Only the most recent entries
are kept (older ones are removed when a new one is first written).

examples:
  mrq cache                             where the caches are, their entries and sizes
  NUMBA_CACHE_DIR=/tmp/nb mrq cache     the kernel cache goes under $NUMBA_CACHE_DIR/simulator-jit
  mrq cache clear                       remove both caches (the next run compiles again)
"""

CLEAR_EXAMPLES = """\
Removes the simulator's kernel cache root (with NUMBA_CACHE_DIR set, only its simulator-jit
folder) and the compiled-programs folder; nothing else in those directories is touched. The
next simulation compiles its kernels again (20 s to 2 min).

examples:
  mrq cache clear
  mrq cache clear -q
"""


def register(sub):
    from mrq.commands.common import add_parser
    p = add_parser(sub, "cache", help="show or clear the simulator's compiled-code caches",
                   description="Show where the simulator's kernel cache and the compiled "
                               "programs are cached and how big each entry is, or clear them.",
                   epilog_text=INFO_EXAMPLES)
    p.set_defaults(func=run_info, simulates=False)
    ps = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    ip = add_parser(ps, "info", help="list the caches, their entries and sizes (the default)",
                    description="List the kernel cache's entries (one per sources digest and "
                                "kernel path) and the compiled-programs folder with file counts "
                                "and sizes.",
                    epilog_text=INFO_EXAMPLES, nested=True)
    ip.set_defaults(func=run_info)
    cp = add_parser(ps, "clear", help="remove the caches mrq and the simulator own",
                    description="Remove the kernel cache and the compiled programs.",
                    epilog_text=CLEAR_EXAMPLES, nested=True)
    cp.set_defaults(func=run_clear)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _programs():
    from simulator import compiled
    from simulator.kernels import jitcache

    path = compiled.programs_dir()
    files, size = jitcache._tree_size(path) if os.path.isdir(path) else (0, 0)
    return path, files, size


def run_info(args) -> int:
    from simulator.kernels import jitcache

    root = jitcache.cache_root()
    entries = jitcache.entries(root)
    print(f"kernel cache: {root}" + ("" if os.path.isdir(root) else "  (not created yet)"))
    print(f"  current entry: {jitcache.jit_key()}"
          + ("" if any(e["current"] for e in entries) else "  (empty: the next run compiles)"))
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["mtime"]))
        mark = "*" if e["current"] else " "
        print(f"  {mark} {e['name']}  {e['files']:5d} files  {_size(e['bytes']):>10}  "
              f"written {when}")
    print(f"  (at most {jitcache.KEEP_DIGESTS} source versions are kept)")
    path, files, size = _programs()
    print(f"compiled programs: {path}" + ("" if os.path.isdir(path) else "  (not created yet)"))
    print(f"  {files} files  {_size(size)}")
    return 0


def run_clear(args) -> int:
    from mrq.commands.common import log
    from simulator.kernels import jitcache

    root = jitcache.cache_root()
    path = _programs()[0]
    for where in (root, path):
        existed = os.path.lexists(where)
        files, size = jitcache.clear(where)  # a symlinked folder is emptied, not unlinked
        log.info(f"removed {where} ({files} files, {_size(size)})" if existed
                 else f"nothing to remove at {where}")
    return 0
