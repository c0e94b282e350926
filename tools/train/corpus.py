#!/usr/bin/env python3
"""Build the loraplex demo training corpus (stdlib only, runs on the dev machine).

    python3 tools/train/corpus.py --out .train/corpus

Writes <out>/<domain>/{train,eval}.txt for domain in go, python, c, english and
<out>/manifest.json (every file used, its split and size). Deterministic: file lists are
sorted, the split is by file (a hash of the relative path), and each domain is capped.
See tools/train/SOURCES.md for the sources, licences and selection rules.
"""
import argparse, hashlib, json, os, subprocess, sys, sysconfig, tarfile, glob, shutil
from concurrent.futures import ThreadPoolExecutor

SEP = "\n\n"  # documents are joined with a blank line (the trainer also splits on it)


def eval_file(rel, frac):
    # stable split by file: sha256 of the relative path
    h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16)
    return (h % 1000) < frac * 1000


def read_text(p):
    try:
        with open(p, "rb") as f:
            b = f.read()
        t = b.decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    t = t.replace("\r\n", "\n")
    if "\x00" in t:
        return None
    return t


def select(files, root, frac, train_cap, eval_cap, max_file):
    """files: sorted absolute paths. Returns (train_docs, eval_docs, manifest)."""
    tr, ev, man = [], [], []
    ntr = nev = 0
    # visit files in the order of a hash of their path, so a capped selection samples the
    # whole tree instead of its alphabetically first directories
    files = sorted(files, key=lambda p: hashlib.sha256(os.path.relpath(p, root).encode()).hexdigest())
    for p in files:
        rel = os.path.relpath(p, root)
        if rel.startswith(".."):
            rel = p
        t = read_text(p)
        if t is None or len(t) < 200:
            continue
        if len(t) > max_file:
            t = t[:max_file]
            t = t[: t.rfind("\n") + 1]
        if eval_file(rel, frac):
            if nev >= eval_cap:
                continue
            ev.append(t); nev += len(t); man.append((rel, "eval", len(t)))
        else:
            if ntr >= train_cap:
                continue
            tr.append(t); ntr += len(t); man.append((rel, "train", len(t)))
        if ntr >= train_cap and nev >= eval_cap:
            break
    return tr, ev, man


def walk(root, exts, skip_dirs=(), skip_suffix=()):
    out = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in skip_dirs)
        for f in fs:
            if f.endswith(exts) and not f.endswith(skip_suffix):
                out.append(os.path.join(d, f))
    return sorted(out, key=lambda p: os.path.relpath(p, root))


def go_files():
    root = subprocess.check_output(["go", "env", "GOROOT"], text=True).strip() + "/src"
    # skip testdata and vendor trees and tests
    files = walk(root, (".go",), skip_dirs=("testdata", "vendor"), skip_suffix=("_test.go",))
    return root, files


def python_files():
    root = sysconfig.get_paths()["stdlib"]
    files = walk(root, (".py",), skip_dirs=("test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3",
                                          "encodings"))
    return root, files


C_PACKAGES = ["sqlite3", "lua5.4", "zlib"]


def fetch_c_sources(srcdir):
    """apt-get source --download-only the C packages (needs a deb-src line) and unpack their
    upstream (orig) tarballs into srcdir/<pkg>/."""
    os.makedirs(srcdir, exist_ok=True)
    dl = os.path.join(srcdir, "_dl")
    os.makedirs(dl, exist_ok=True)
    for pkg in C_PACKAGES:
        dst = os.path.join(srcdir, pkg)
        if os.path.isdir(dst):
            continue
        if not glob.glob(os.path.join(dl, pkg + "_*.orig.tar.*")):
            subprocess.check_call(["apt-get", "source", "--download-only", pkg], cwd=dl)
        tb = sorted(glob.glob(os.path.join(dl, pkg + "_*.orig.tar.*")))[0]
        os.makedirs(dst + ".tmp", exist_ok=True)
        with tarfile.open(tb) as tf:
            tf.extractall(dst + ".tmp")
        os.rename(dst + ".tmp", dst)
        print(f"  c: unpacked {os.path.basename(tb)}", file=sys.stderr)


def c_files(srcdir):
    files = []
    for pkg in C_PACKAGES:
        files += walk(os.path.join(srcdir, pkg), (".c", ".h"), skip_dirs=("test", "tests", "testing"))
    # Go's runtime/cgo C files (BSD-3-Clause)
    groot = subprocess.check_output(["go", "env", "GOROOT"], text=True).strip()
    files += walk(os.path.join(groot, "src/runtime/cgo"), (".c", ".h"))
    # zlib/nettle/xz examples shipped in /usr/share/doc (their packages' licences)
    for ex in ["zlib1g-dev", "nettle-dev", "liblzma-dev", "libidn2-dev", "libtasn1-6-dev"]:
        files += walk(f"/usr/share/doc/{ex}/examples", (".c", ".h"))
    return "/", sorted(set(files), key=lambda p: p)


MAN_SECTIONS = ["1", "5", "7", "8"]


def man_pages():
    files = []
    for s in MAN_SECTIONS:
        d = f"/usr/share/man/man{s}"
        if os.path.isdir(d):
            files += [os.path.join(d, f) for f in os.listdir(d) if f.endswith(f".{s}.gz") or f.endswith(f".{s}")]
    # hash order: sample every section instead of the alphabetically first pages of man1
    return sorted(files, key=lambda p: hashlib.sha256(os.path.relpath(p, "/usr/share/man").encode()).hexdigest())


def render_man(p):
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    try:
        r = subprocess.run(["man", "-P", "cat", "-E", "UTF-8", "-l", p], env=env, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    t = r.stdout.decode("utf-8", "replace")
    # strip any leftover overstrike and collapse runs of blank lines
    import re
    t = re.sub(r".\x08", "", t)
    t = re.sub(r"\n{3,}", "\n\n", t)
    # drop lines that are mostly non-ascii junk
    return t.strip() + "\n"


def english_docs(mandir_cache, frac, train_cap, eval_cap):
    os.makedirs(mandir_cache, exist_ok=True)
    pages = man_pages()
    # skip symlinked/.so stubs (tiny) by size; render in parallel, deterministic order kept
    def job(p):
        rel = os.path.relpath(p, "/usr/share/man")
        cache = os.path.join(mandir_cache, rel.replace("/", "__") + ".txt")
        if os.path.exists(cache):
            return p, open(cache, encoding="utf-8").read()
        t = render_man(p)
        if t is None:
            t = ""
        with open(cache, "w", encoding="utf-8") as f:
            f.write(t)
        return p, t
    # render until caps are met, in sorted chunks so the selection does not depend on threads
    tr, ev, man = [], [], []
    ntr = nev = 0
    chunk = 256
    seen = set()
    with ThreadPoolExecutor(16) as ex:
        for i in range(0, len(pages), chunk):
            for p, t in ex.map(job, pages[i:i + chunk]):
                rel = os.path.relpath(p, "/usr/share/man")
                if len(t) < 400:
                    continue
                # keep only mostly-ASCII pages (English); translated pages live elsewhere anyway
                if sum(c < "\x80" for c in t) < 0.98 * len(t):
                    continue
                key = hashlib.sha256(t.encode()).hexdigest()
                if key in seen:  # aliases render the same page
                    continue
                seen.add(key)
                if len(t) > 60000:
                    t = t[:60000]; t = t[: t.rfind("\n") + 1]
                if eval_file(rel, frac):
                    if nev < eval_cap:
                        ev.append(t); nev += len(t); man.append((rel, "eval", len(t)))
                elif ntr < train_cap:
                    tr.append(t); ntr += len(t); man.append((rel, "train", len(t)))
            if ntr >= train_cap and nev >= eval_cap:
                break
    return tr, ev, man


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".train/corpus")
    ap.add_argument("--src", default=".train/src", help="where C source packages are unpacked")
    ap.add_argument("--train-mb", type=float, default=6.0, help="train text per domain (MB)")
    ap.add_argument("--eval-kb", type=float, default=120.0, help="held-out text per domain (KB) before eval.txt is cut")
    ap.add_argument("--eval-frac", type=float, default=0.08)
    args = ap.parse_args()
    cap = int(args.train_mb * 1e6)
    ecap = int(args.eval_kb * 1e3)
    os.makedirs(args.out, exist_ok=True)
    manifest = {}
    doms = {}
    r, f = go_files()
    doms["go"] = select(f, r, args.eval_frac, cap, ecap, 40000) + (r,)
    r, f = python_files()
    doms["python"] = select(f, r, args.eval_frac, cap, ecap, 40000) + (r,)
    fetch_c_sources(args.src)
    r, f = c_files(args.src)
    doms["c"] = select(f, args.src, args.eval_frac, cap, ecap, 40000) + (args.src,)
    doms["english"] = english_docs(os.path.join(os.path.dirname(args.out.rstrip("/")) or ".", "mancache"),
                                   args.eval_frac, cap, ecap) + ("/usr/share/man",)
    for d, (tr, ev, man, root) in doms.items():
        os.makedirs(os.path.join(args.out, d), exist_ok=True)
        with open(os.path.join(args.out, d, "train.txt"), "w", encoding="utf-8") as fh:
            fh.write(SEP.join(x.strip("\n") for x in tr) + "\n")
        with open(os.path.join(args.out, d, "eval.txt"), "w", encoding="utf-8") as fh:
            fh.write(SEP.join(x.strip("\n") for x in ev) + "\n")
        manifest[d] = {"root": root, "files": [{"path": p, "split": s, "chars": n} for p, s, n in man]}
        ntr = os.path.getsize(os.path.join(args.out, d, "train.txt"))
        nev = os.path.getsize(os.path.join(args.out, d, "eval.txt"))
        print(f"{d:8s} train {ntr/1e6:6.2f} MB ({sum(1 for m in man if m[1]=='train')} files)  "
              f"eval {nev/1e3:7.1f} KB ({sum(1 for m in man if m[1]=='eval')} files)")
    with open(os.path.join(args.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)


if __name__ == "__main__":
    main()
