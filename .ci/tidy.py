#!/usr/bin/env python3
"""Holds two rules of the code's shape over every crate's sources (less their
`mod tests`), as rust-analyzer's tidy tests do:

- no import cycle among a crate's files: a file's references (`use`, paths
  through `crate::`, `super::`, `self::` or a child module) are resolved to the
  file that defines the item, following re-exports; a module and its own
  children may name each other (they are one unit), any other cycle fails;
- no file holds more than 800 lines before its tests.

Exits non-zero naming what broke either rule."""
import os
import re
import sys

MAX_LINES = 800
CRATES = ["protocol/src", "agent/src", "control-plane/src"]


def modules(src):
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel == ["main"] and os.path.exists(os.path.join(src, "lib.rs")):
                continue
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            files[tuple(rel)] = path
    return files


def before_tests(text):
    end = text.find("#[cfg(test)]\nmod tests")
    return text if end < 0 else text[:end]


def code(path):
    return re.sub(r"//[^\n]*", "", before_tests(open(path).read()))


def use_paths(tree):
    """Flattens a `use` tree (`a::{b, c::{d, e}}`) into paths."""
    tree = re.sub(r"\s+", "", tree)

    def expand(prefix, rest):
        if rest.startswith("{") and rest.endswith("}"):
            parts, depth, current = [], 0, ""
            for ch in rest[1:-1]:
                depth += ch == "{"
                depth -= ch == "}"
                if ch == "," and depth == 0:
                    parts.append(current)
                    current = ""
                else:
                    current += ch
            if current:
                parts.append(current)
            return [p for part in parts for p in expand(prefix, part)]
        brace = rest.find("::{")
        if brace >= 0:
            return expand(prefix + rest[:brace].split("::"), rest[brace + 2 :])
        rest = re.sub(r"as[A-Za-z_][A-Za-z0-9_]*$", "", rest) if "as" in rest else rest
        return [prefix + [p for p in rest.split("::") if p]]

    return expand([], tree)


def absolute(me, path):
    if not path:
        return None
    if path[0] == "crate":
        return path[1:]
    if path[0] == "super":
        base, path = list(me[:-1]), path[1:]
        while path and path[0] == "super":
            base, path = base[:-1], path[1:]
        return base + path
    if path[0] == "self":
        return list(me) + path[1:]
    return None


def graph_of(src):
    files = modules(src)
    texts = {key: code(path) for key, path in files.items()}
    reexports = {}
    for key, text in texts.items():
        found = {}
        for m in re.finditer(r"pub(?:\([a-z]+\))?\s+use\s+([^;]+);", text):
            for path in use_paths(m.group(1)):
                target = absolute(key, path)
                if target is None and path and tuple(list(key) + [path[0]]) in files:
                    target = list(key) + path
                if not target:
                    continue
                if path[-1] == "*":
                    found.setdefault("*", []).append(target[:-1])
                else:
                    found[path[-1]] = target
        reexports[key] = found

    def resolve(path, depth=0):
        for n in range(len(path), -1, -1):
            module = tuple(path[:n])
            if module not in files:
                continue
            rest = path[n:]
            if rest and depth < 10:
                named = reexports.get(module, {})
                if rest[0] in named and rest[0] != "*":
                    return resolve(named[rest[0]] + rest[1:], depth + 1)
                for glob in named.get("*", []):
                    target = resolve(glob, depth + 1)
                    defines = r"\b(fn|struct|enum|trait|type|const|static)\s+" + re.escape(rest[0]) + r"\b"
                    if target in texts and re.search(defines, texts[target]):
                        return target
            return module
        return None

    graph = {}
    for key, text in texts.items():
        edges = set()
        for m in re.finditer(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            path = absolute(key, [m.group(1)] + m.group(2).split("::")[1:])
            if path is not None:
                edges.add(resolve(path))
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            for path in use_paths(m.group(1)):
                target = absolute(key, path)
                if target is None and path and tuple(list(key) + [path[0]]) in files:
                    target = list(key) + path
                if target:
                    edges.add(resolve(target[:-1] if target[-1] == "self" else target))
        for m in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)", text):
            child = tuple(list(key) + [m.group(1)])
            if child in files:
                edges.add(resolve(list(child) + [m.group(2)]))
        # A module and its own children are one unit.
        graph[key] = {
            e for e in edges if e is not None and e != key and e != key[:-1] and key != e[:-1]
        }
    return graph


def cycles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main():
    failed = False
    for src in CRATES:
        graph = graph_of(src)
        for component in cycles(graph):
            failed = True
            names = lambda key: "::".join(key) or "lib"
            print(f"{src}: import cycle among {', '.join(sorted(names(k) for k in component))}:")
            for a in component:
                for b in sorted(graph[a]):
                    if b in component:
                        print(f"    {names(a)} -> {names(b)}")
        for key, path in sorted(modules(src).items()):
            lines = before_tests(open(path).read()).count("\n")
            if lines > MAX_LINES:
                failed = True
                print(f"{path}: {lines} lines before its tests, more than {MAX_LINES}; split it along its parts")
    if failed:
        sys.exit(1)
    print("tidy: no import cycle, no file over 800 lines before its tests")


main()
