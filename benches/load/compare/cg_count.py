#!/usr/bin/env python3
"""Reads a callgrind out file; prints "TOTAL EXCLUDED": the program's total
instructions, and the instructions spent inside calls to the functions
named on the command line (inclusive), from callers outside them.

compare_all.sh leaves out quanta's clock calibration this way: it runs
once, at start-up, for as long as its wall-clock criteria take, which
under valgrind varies from run to run by millions of instructions and
would not cancel between the two runs of a pair.
"""
import re
import sys

path, *excluded = sys.argv[1:]
names = {}
total = 0
out = 0
fn = ""
cfn = ""
pending = False
name_re = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")
for line in open(path, errors="replace"):
    if pending:
        pending = False
        parts = line.split()
        if len(parts) >= 2 and any(x in cfn for x in excluded) and not any(x in fn for x in excluded):
            out += int(parts[1])
        continue
    if line.startswith(("summary:", "totals:")) and not total:
        total = int(line.split()[1])
    elif line.startswith("fn="):
        m = name_re.match(line.strip())
        if m.group(2):
            names[m.group(1)] = m.group(2)
        fn = names.get(m.group(1), "")
    elif line.startswith("cfn="):
        m = name_re.match(line.strip())
        if m.group(2):
            names[m.group(1)] = m.group(2)
        cfn = names.get(m.group(1), "")
    elif line.startswith("calls="):
        pending = True
print(total, out)
