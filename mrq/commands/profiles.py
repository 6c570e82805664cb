"""``mrq profiles``: list, validate and show hardware profiles."""
import sys

LIST_EXAMPLES = """\
profiles are found by name along the search path (the first match wins):
  1. each directory of $MRQ_PROFILE_PATH (separated by the OS path separator), in order
  2. ./hw_profiles of the current directory
  3. the shipped profiles

examples:
  mrq profiles                          list every profile, where it came from, and which
                                        names an earlier directory shadows
  MRQ_PROFILE_PATH=~/npu mrq profiles   include your own directory first
  mrq profiles validate my-npu.yaml     check a profile (every problem at once)
  mrq profiles show nna-sym8            the resolved profile with every default filled in
"""

VALIDATE_EXAMPLES = """\
Prints 'FILE: ok' for each valid file and one line per problem
('FILE: field 'FIELD': problem (line N)') on stderr; exit code 2 if any file has a problem.

examples:
  mrq profiles validate my-npu.yaml
  mrq profiles validate hw_profiles/*.yaml
  mrq profiles validate nna-sym8        a name is looked up along the search path
"""

SHOW_EXAMPLES = """\
Prints the profile as YAML with every default filled in (the output loads to the same profile),
after a comment naming the file it came from.

examples:
  mrq profiles show nna-sym8
  mrq profiles show ./my-npu.yaml > resolved.yaml
"""


def register(sub):
    from mrq.commands.common import add_parser
    p = add_parser(sub, "profiles", help="list, validate and show hardware profiles",
                   description="List the hardware profiles found by name, validate profile "
                               "files, or show a resolved profile.",
                   epilog_text=LIST_EXAMPLES)
    p.set_defaults(func=run_list, simulates=False)
    ps = p.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND")
    lp = add_parser(ps, "list", help="list the profiles found by name (the default)",
                    description="List every profile on the search path with the directory it "
                                "came from; names shadowed by an earlier directory are marked.",
                    epilog_text=LIST_EXAMPLES, nested=True)
    lp.set_defaults(func=run_list)
    vp = add_parser(ps, "validate", help="check profile files and report every problem",
                    description="Load each profile and report every problem it has.",
                    epilog_text=VALIDATE_EXAMPLES, nested=True)
    vp.add_argument("files", nargs="+", metavar="FILE", help="profile YAML file or name")
    vp.set_defaults(func=run_validate)
    sp = add_parser(ps, "show", help="print a resolved profile as YAML",
                    description="Print a profile as YAML with every default filled in.",
                    epilog_text=SHOW_EXAMPLES, nested=True)
    sp.add_argument("profile", metavar="NAME|FILE", help="profile name or YAML file")
    sp.set_defaults(func=run_show)


def run_list(args) -> int:
    from mrq.errors import HwProfileError
    from mrq.hw_profile import find_profiles, load_profile, profile_search_path

    print("search path (the first match of a name wins):")
    for i, (d, origin) in enumerate(profile_search_path(), 1):
        missing = "" if d.is_dir() else "  (not a directory)"
        print(f"  {i}. {d}  [{origin}]{missing}")
    entries = find_profiles()
    if not entries:
        print("no profiles found")
        return 0
    width = max(len(e.name) for e in entries)
    problems = []
    print()
    for e in entries:
        if e.shadowed_by is not None:
            print(f"{e.name:<{width}}  (shadowed by {e.shadowed_by})  [{e.origin}: {e.path}]")
            continue
        try:
            text = load_profile(e.path).description
        except HwProfileError as err:
            n = len(err.errors)
            text = f"INVALID ({n} problem{'s' if n > 1 else ''}; see below)"
            problems += str(err).splitlines()
        print(f"{e.name:<{width}}  {text}  [{e.origin}: {e.path}]")
    for line in problems:
        print(f"mrq profiles: error: {line}", file=sys.stderr)
    return 2 if problems else 0


def run_validate(args) -> int:
    from mrq.errors import HwProfileError
    from mrq.hw_profile import load_profile

    failed = False
    for f in args.files:
        try:
            load_profile(f)
        except HwProfileError as err:
            failed = True
            for line in str(err).splitlines():
                print(line, file=sys.stderr)
        else:
            print(f"{f}: ok")
    return 2 if failed else 0


def run_show(args) -> int:
    import yaml

    from mrq.hw_profile import load_profile

    class Dumper(yaml.SafeDumper):
        pass

    # mappings as blocks (like the shipped files), lists of op types on one line
    Dumper.add_representer(list, lambda d, v: d.represent_sequence(
        "tag:yaml.org,2002:seq", v, flow_style=True))
    prof = load_profile(args.profile)
    print(f"# hardware profile {prof.name!r} from {prof.source} (every default filled in)")
    # width: one line per value, so a long description is not folded
    sys.stdout.write(yaml.dump(prof.to_dict(), Dumper=Dumper, sort_keys=False, width=10**6,
                               default_flow_style=False, allow_unicode=True))
    return 0
