"""``mrq profiles``: list the shipped hardware profiles."""


def register(sub):
    p = sub.add_parser("profiles", help="list the shipped hardware profiles")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.hw_profile import list_profiles
    rows = list_profiles()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0
