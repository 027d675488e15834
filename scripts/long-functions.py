#!/usr/bin/env python3
"""List the longest non-test functions in the workspace (issue 13: none over 120
lines).

Good-enough brace matching from each `fn ` line: skips test, bench and fuzz
directories (but keeps the simulator library under tests/sim/src/), `#[cfg(test)]`
items and `#[test]` functions; ignores braces in `//` comments, char literals and
one-line strings (raw and multi-line strings are not parsed). Nested functions
are reported on their own and also counted inside their parent.

Usage: scripts/long-functions.py [--top N] [--over LINES]
  default: the top 20; with --over, every function longer than LINES.
"""
import argparse
import pathlib
import re
import subprocess

FN = re.compile(
    r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?'
    r'(extern\s+"[^"]*"\s+)?fn\s+(\w+)'
)
TEST_ATTR = re.compile(r'^\s*#\[(cfg\(test\)|test\b|tokio::test\b)')
NON_PRODUCT = re.compile(r'(^|/)(tests|benches|fuzz|examples)/')


def strip(line):
    line = re.sub(r"'(\\.|[^\\'])'", "''", line)
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    return line.split('//', 1)[0]


def item_end(lines, start):
    """Index of the line closing the item opening at `start`, or None if it
    has no body (a trait method declaration)."""
    depth, opened = 0, False
    for j in range(start, len(lines)):
        t = strip(lines[j])
        if not opened and ';' in t and '{' not in t:
            return None
        depth += t.count('{') - t.count('}')
        opened = opened or '{' in t
        if opened and depth <= 0:
            return j
    return None


def functions(path):
    lines = path.read_text(encoding='utf-8').split('\n')
    i, in_test = 0, False
    while i < len(lines):
        s = lines[i].strip()
        if TEST_ATTR.match(s):
            in_test = True
        elif s and not s.startswith('#[') and not s.startswith('//'):
            if in_test:
                # The item the test attribute applies to: skip it whole.
                end = item_end(lines, i)
                i = (end if end is not None else i) + 1
                in_test = False
                continue
            m = FN.match(lines[i])
            if m:
                end = item_end(lines, i)
                if end is not None:
                    yield end - i + 1, i + 1, m.group(7)
        i += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--top', type=int, default=20)
    ap.add_argument('--over', type=int)
    args = ap.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    files = subprocess.run(
        ['git', 'ls-files', '*.rs'], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for f in files:
        if NON_PRODUCT.search(f) and not f.startswith('tests/sim/src/'):
            continue
        for length, line, name in functions(root / f):
            found.append((length, f'{f}:{line}', name))
    found.sort(reverse=True)
    if args.over is not None:
        found = [x for x in found if x[0] > args.over]
    else:
        found = found[: args.top]
    for length, where, name in found:
        print(f'{length:5d}  {name:32}  {where}')


if __name__ == '__main__':
    main()
