"""A Python reward for the compare tests: ``_compare_rewards:spaces`` (tests/compare is put on sys.path by the
tests; the name is unique so it never shadows another test directory's reward module)."""


def spaces(prompts, completions):
    return [c.count(" ") / max(len(c), 1) for c in completions]
