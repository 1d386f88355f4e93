#!/usr/bin/env python3
"""Lists the longest C++ function definitions under the given source roots.

Usage: scripts/function_lengths.py [--top N] [--max L] [ROOT ...]
  ROOT      directories or files (default: estimator plugin metrics tools bench
            tests, relative to the repository root)
  --top N   print the N longest functions (default 20) as
            `lines path:line name`, longest first
  --max L   instead list the functions over L lines and exit 1 if there are
            any; a function is exempt when the comment block right above its
            definition contains "Long:" (the reason, e.g. `// Long: one table
            of ...`). With --max, --top is printed only when given.

A function is counted from the first line of its declaration (template<...>
or return type) to its closing brace. The scan assumes clang-formatted
Google-style code: comments, string and character literals and preprocessor
lines are blanked first, then braces are matched. A `{` at namespace or class
scope opens a function body when what precedes it is a declarator with a
parameter list (optionally followed by qualifiers, a trailing return type or a
constructor's initializer list); class, struct, union, enum and namespace
bodies and brace initializers are not functions. Braces inside a function
(blocks, lambdas, local classes) count toward that function.
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOTS = ["estimator", "plugin", "metrics", "tools", "bench", "tests"]
LITERAL_PREFIXES = {"L", "u", "U", "u8", "R", "LR", "uR", "UR", "u8R"}


def strip_source(text):
    """Blanks comments, literals and preprocessor lines; keeps newlines.

    String literals become `""`, character literals `''`, so that the scan
    still sees that an expression was there.
    """
    out = []
    i = 0
    n = len(text)
    at_line_start = True  # only whitespace so far on this line

    def blank(s):
        return "".join("\n" if ch == "\n" else " " for ch in s)

    while i < n:
        ch = text[i]
        if ch == "\n":
            out.append(ch)
            at_line_start = True
            i += 1
            continue
        if at_line_start and ch == "#":
            # Preprocessor directive, with backslash continuations.
            j = i
            while j < n:
                k = text.find("\n", j)
                if k == -1:
                    k = n
                if k > 0 and text[k - 1] == "\\" and k < n:
                    j = k + 1
                    continue
                break
            out.append(blank(text[i:k]))
            i = k
            continue
        if not ch.isspace():
            at_line_start = False
        if text.startswith("//", i):
            k = text.find("\n", i)
            k = n if k == -1 else k
            out.append(blank(text[i:k]))
            i = k
            continue
        if text.startswith("/*", i):
            k = text.find("*/", i + 2)
            k = n if k == -1 else k + 2
            out.append(blank(text[i:k]))
            i = k
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            # A pp-number, digit separators (1'000) included.
            j = i + 1
            while j < n:
                c = text[j]
                if c.isalnum() or c in "._":
                    j += 1
                elif c == "'" and j + 1 < n and text[j + 1].isalnum():
                    j += 1
                elif c in "+-" and text[j - 1] in "eEpP":
                    j += 1
                else:
                    break
            out.append(text[i:j])
            i = j
            continue
        if ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if j < n and text[j] in "\"'" and word in LITERAL_PREFIXES:
                out.append(" " * len(word))
                i = j
                if word.endswith("R") and text[j] == '"':
                    # Raw string: R"delim( ... )delim"
                    k = text.find("(", j)
                    delim = text[j + 1:k]
                    end = text.find(")" + delim + '"', k)
                    end = n if end == -1 else end + len(delim) + 2
                    out.append('""' + blank(text[j + 2:end]))
                    i = end
                continue
            out.append(word)
            i = j
            continue
        if ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(ch + ch + blank(text[i + 2:j]) if j - i >= 2 else ch)
            i = j
            continue
        out.append(ch)
        i += 1
    return "".join(out)


TOKEN = re.compile(r"\s*(::|->|[A-Za-z_]\w*|\d[\w.']*|\"\"|''|\S)")


def tokenize(head):
    return [m.group(1) for m in TOKEN.finditer(head) if m.group(1)]


def strip_template_prefix(tokens):
    """Drops leading `template <...>` and `[[attributes]]`."""
    while tokens:
        if tokens[0] == "template" and len(tokens) > 1 and tokens[1] == "<":
            depth = 0
            for k in range(1, len(tokens)):
                if tokens[k] == "<":
                    depth += 1
                elif tokens[k] == ">":
                    depth -= 1
                    if depth == 0:
                        tokens = tokens[k + 1:]
                        break
            else:
                return tokens
        elif tokens[:2] == ["[", "["]:
            k = 2
            while k + 1 < len(tokens) and tokens[k:k + 2] != ["]", "]"]:
                k += 1
            tokens = tokens[k + 2:]
        else:
            return tokens
    return tokens


ANNOTATIONS = {"alignas", "decltype", "noexcept", "throw", "requires",
               "__attribute__", "__declspec", "sizeof", "alignof"}


def is_macro_name(tok):
    return re.fullmatch(r"[A-Z_][A-Z0-9_]*", tok) is not None and len(tok) > 1


def classify(head):
    """Returns ('function', name) / ('scope', kind) / ('init', None)."""
    tokens = strip_template_prefix(tokenize(head))
    while len(tokens) >= 2 and tokens[0] in ("public", "private",
                                             "protected") and tokens[1] == ":":
        tokens = tokens[2:]
    if not tokens:
        return ("init", None)  # a bare block; not expected at this scope
    if tokens[0] == "namespace" or tokens[:2] == ["extern", '""']:
        return ("scope", "namespace")
    first = [t for t in tokens[:3] if t not in ("typedef", "friend")]
    if first and first[0] in ("class", "struct", "union"):
        if "(" not in tokens or tokens.index("(") > tokens.index(first[0]) + 1:
            # `struct Foo : Bar<...> {`, not `struct Foo* F(...) {`.
            if not any(t == "(" for t in tokens) or ":" in tokens:
                return ("scope", "class")
    if first and first[0] == "enum":
        return ("init", None)
    # Paren balance: an unclosed `(` means we are inside an expression.
    depth = 0
    for t in tokens:
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
    if depth != 0:
        return ("init", None)
    # Walk the top level: find parameter-list groups, a top-level `=` and a
    # constructor's initializer-list colon.
    angle = 0
    paren = 0
    groups = []  # (open index, close index)
    open_at = None
    ctor_colon = None
    skip_to = 0
    for k, t in enumerate(tokens):
        if k < skip_to:
            continue  # the symbol of an operator's name
        prev = tokens[k - 1] if k else ""
        if paren == 0 and t == "operator":
            # operator() / operator< / operator== ...: up to the parameters.
            skip_to = k + 1
            if tokens[k + 1:k + 3] == ["(", ")"]:
                skip_to = k + 3
            while skip_to < len(tokens) and tokens[skip_to] != "(":
                skip_to += 1
            continue
        if t == "(":
            if paren == 0:
                open_at = k
            paren += 1
        elif t == ")":
            paren -= 1
            if paren == 0 and angle == 0:
                groups.append((open_at, k))
        elif paren:
            continue
        elif t == "<":
            if re.fullmatch(r"[A-Za-z_]\w*", prev) or prev == ">":
                angle += 1
        elif t == ">" and angle:
            angle -= 1
        elif t == "=" and angle == 0 and ctor_colon is None:
            if not groups or prev != ")":
                return ("init", None)
        elif t == ":" and angle == 0 and groups and ctor_colon is None:
            if tokens[k - 1] == ")" or is_macro_name(tokens[k - 1]) or \
                    tokens[k - 1] in ("const", "noexcept", "override"):
                ctor_colon = k
    if ctor_colon is not None:
        # `Foo() : a_{` is a member's brace initializer, not the body.
        if tokens[-1] not in (")", "}"):
            return ("init", None)
        groups = [g for g in groups if g[1] < ctor_colon]
    for open_at, close_at in groups:
        before = tokens[open_at - 1] if open_at else ""
        if before in ANNOTATIONS:
            continue
        if is_macro_name(before) and open_at - 1 > 0:
            continue  # ABSL_GUARDED_BY(mu_) and friends after a declarator
        if not re.fullmatch(r"[A-Za-z_~]\w*|\)|[^\w\s]+", before or "x"):
            continue
        return ("function", function_name(tokens, open_at, close_at))
    return ("init", None)


def function_name(tokens, open_at, close_at):
    if open_at and is_macro_name(tokens[open_at - 1]) and open_at == 1:
        return tokens[0] + "(" + " ".join(tokens[2:close_at]).replace(
            " , ", ", ") + ")"
    k = open_at - 1
    parts = []
    # operator tokens
    j = k
    while j >= 0 and tokens[j] != "operator" and k - j < 4 and \
            not re.fullmatch(r"[A-Za-z_~]\w*", tokens[j]):
        j -= 1
    if j >= 0 and tokens[j] == "operator":
        parts = tokens[j:open_at]
        k = j - 1
    else:
        parts = [tokens[k]]
        if k > 0 and tokens[k - 1] == "~":
            parts.insert(0, "~")
            k -= 1
        k -= 1
    while k >= 1 and tokens[k] == "::":
        # Skip template arguments of the qualifier: Foo<T>::Bar
        q = k - 1
        if tokens[q] == ">":
            depth = 0
            while q >= 0:
                if tokens[q] == ">":
                    depth += 1
                elif tokens[q] == "<":
                    depth -= 1
                    if depth == 0:
                        break
                q -= 1
            q -= 1
        if q < 0:
            break
        parts = [tokens[q], "::"] + parts
        k = q - 1
    name = "".join(parts)
    return name


def scan(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        original = f.read()
    text = strip_source(original)
    lines = original.split("\n")
    line_starts = [0]
    for m in re.finditer("\n", text):
        line_starts.append(m.end())

    def line_of(pos):
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    results = []
    # Stack entries: kind in {namespace, class, function, init, block}.
    stack = []
    head_start = 0  # start of the current declaration at this scope
    func_start = None
    access = r"\b(?:public|private|protected)\s*:(?!:)"
    for m in re.finditer(r"[{};]|" + access, text):
        ch = m.group(0)
        pos = m.start()
        inside = any(k in ("function", "init") for k, _ in stack)
        if len(ch) > 1:  # an access specifier starts a new declaration
            if not inside:
                head_start = m.end()
        elif ch == "{":
            if inside:
                stack.append(("block", None))
                continue
            kind, info = classify(text[head_start:pos])
            if kind == "function":
                first = head_start + (len(text[head_start:pos]) -
                                      len(text[head_start:pos].lstrip()))
                stack.append(("function", (first, info)))
            elif kind == "scope":
                stack.append((info, None))
                head_start = pos + 1
            else:
                stack.append(("init", None))
        elif ch == "}":
            if not stack:
                continue
            kind, info = stack.pop()
            if kind == "function":
                first, name = info
                start_line = line_of(first)
                end_line = line_of(pos)
                results.append((end_line - start_line + 1, path, start_line,
                                name, has_long_comment(lines, start_line)))
                head_start = pos + 1
            elif kind in ("namespace", "class"):
                head_start = pos + 1
            # init and block: the declaration continues (`= {...};`).
        else:  # ;
            if not inside:
                head_start = pos + 1
    return results


def has_long_comment(lines, start_line):
    """True when the // comment block right above line start_line says Long:."""
    k = start_line - 2
    while k >= 0 and lines[k].strip().startswith("//"):
        if "Long:" in lines[k]:
            return True
        k -= 1
    return False


def source_files(roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith((".cc", ".h")):
                    yield os.path.join(dirpath, f)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*")
    parser.add_argument("--top", type=int, default=None)
    parser.add_argument("--max", type=int, default=None)
    args = parser.parse_args()
    roots = args.roots or [os.path.join(REPO, r) for r in DEFAULT_ROOTS]
    found = []
    for path in source_files(roots):
        found.extend(scan(path))
    found.sort(key=lambda r: (-r[0], r[1], r[2]))

    def show(row):
        lines, path, line, name, _ = row
        rel = os.path.relpath(path, REPO) if os.path.abspath(path).startswith(
            REPO + os.sep) else path
        print(f"{lines:5d} {rel}:{line} {name}")

    if args.max is None or args.top is not None:
        for row in found[:args.top if args.top is not None else 20]:
            show(row)
    if args.max is None:
        return 0
    over = [r for r in found if r[0] > args.max and not r[4]]
    exempt = [r for r in found if r[0] > args.max and r[4]]
    if args.top is not None:
        print()
    if not over:
        print(f"function_lengths: no function over {args.max} lines "
              f"({len(exempt)} over it marked Long:)")
        return 0
    print(f"function_lengths: {len(over)} functions over {args.max} lines "
          f"without a Long: comment:")
    for row in over:
        show(row)
    return 1


if __name__ == "__main__":
    sys.exit(main())
