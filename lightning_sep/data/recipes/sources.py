"""Readers for sound sources that ship as Debian packages, so recipes build offline and reproducibly.

Every reader returns audio as float32 mono at the file's own rate (``resample`` converts) and never
downloads or installs anything: ``require_debian`` checks the files first and, when some are missing,
raises ``MissingSourceError`` whose message ends with the exact ``apt-get install -y PKG ...`` line.

Sources (default paths are where the Debian packages put the files):

* ``openttd-opensfx``: ``opensfx.cat``, OpenTTD's sound catalogue of 73 entries (vehicles, machines,
  animals, crowds, weather). ``read_opensfx`` parses it; each entry carries its title, credits and licence
  (CC0-1.0, CC-BY-3.0 or CC-BY-SA-3.0; the collection as a whole is CC-BY-SA-3.0).
* ``simutrans-pak64``: 24 short game sounds (``*.wav``, 8-bit or 16-bit, 11.025 to 22.05 kHz; Artistic-1.0).
* ``asterisk-core-sounds-en-wav``: the English telephone prompts of one female speaker, Allison Smith
  (8 kHz, 16-bit, about 25 minutes; CC-BY-SA-3.0). Tones, beeps and the ``silence/`` folder are left out.
* ``pocketsphinx-testdata``: 14 read-speech test recordings at 16 kHz of male speakers (BSD-2 per the
  package's copyright file): five LibriVox utterances (one reader, *Sense and Sensibility*), five card
  names (one speaker), one TIDIGITS digit string (speaker ``dhd``), and three headerless ``.raw`` files
  (16-bit little-endian 16 kHz; the rate was checked against pitch and spectrum).
* ``espeak-ng``: the formant speech synthesizer (GPL-3+), for any number of synthetic voices.
* ``tuxpaint-stamps-default``: Tux Paint's stamps; about 135 of them come with a sound effect, an OGG Vorbis file
  ``<name>.ogg`` beside the stamp's ``<name>.txt`` (animals, vehicles, household things, instruments; 5 to 44.1
  kHz, a few stereo; GPL-2), read by ``tuxpaint_recordings``. Most other OGGs there are spoken stamp descriptions
  in some 13 languages (``<name>_desc_<lang>.ogg``, about 7400 short utterances of read speech), listed by
  ``tuxpaint_descriptions``; the rest are spoken names with a locale suffix (``dog_fr.ogg``).

Licences are read from each package's ``/usr/share/doc/PKG/copyright`` (``copyright_licences``).
"""
from __future__ import annotations

import fnmatch
import functools
import io
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import soundfile as sf

DOC_DIR = Path("/usr/share/doc")
OPENSFX_CAT = Path("/usr/share/games/openttd/baseset/opensfx/opensfx.cat")
SIMUTRANS_SOUND_DIR = Path("/usr/share/games/simutrans/pak/sound")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
POCKETSPHINX_DIR = Path("/usr/share/pocketsphinx/test/data")
ESPEAK_NG = Path("/usr/bin/espeak-ng")
TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")

OPENSFX_PACKAGE = "openttd-opensfx"
SIMUTRANS_PACKAGE = "simutrans-pak64"
ASTERISK_PACKAGE = "asterisk-core-sounds-en-wav"
POCKETSPHINX_PACKAGE = "pocketsphinx-testdata"
ESPEAK_PACKAGE = "espeak-ng"
TUXPAINT_PACKAGE = "tuxpaint-stamps-default"

# Asterisk files that are not speech: tones and beeps, monkey screeches, and the silence/ folder.
ASTERISK_NOT_SPEECH = ("beep", "beeperr", "ascending-2tone", "descending-2tone", "tt-monkeys", "silence/*")

# pocketsphinx-testdata speech: file pattern -> speaker id (all male). The three top-level .raw files come
# from unidentified speaker(s) and share one id.
POCKETSPHINX_SPEECH = (
    ("librivox/*.wav", "librivox"),  # a LibriVox reader, "Sense and Sensibility" chapter 1
    ("cards/*.wav", "cards"),  # card names ("ten of clubs")
    ("tidigits/*.raw", "tidigits-dhd"),  # a TIDIGITS digit string, speaker dhd
    ("*.raw", "misc"),  # goforward, numbers, something
)
POCKETSPHINX_RAW_RATE = 16000


class MissingSourceError(RuntimeError):
    """Source files of a recipe are missing; ``command`` is the ``apt-get install -y ...`` line that adds them."""

    def __init__(self, missing: Mapping[str, list[str]]):
        self.missing = {pkg: list(paths) for pkg, paths in sorted(missing.items())}
        self.packages = sorted(self.missing)
        self.command = "apt-get install -y " + " ".join(self.packages)
        lines = ["sound sources missing (recipes read Debian packages offline and install nothing):"]
        for pkg, paths in self.missing.items():
            lines += [f"  {path} (from Debian package {pkg})" for path in paths]
        lines += ["install them (as root) with:", self.command]
        super().__init__("\n".join(lines))


def require_debian(packages_with_paths: Mapping[str, str | Path | Iterable[str | Path]]) -> None:
    """Check that every path exists; raise ``MissingSourceError`` naming the packages to install otherwise.

    ``packages_with_paths`` maps a Debian package name to the file(s) or folder(s) a recipe reads from it.
    """
    missing: dict[str, list[str]] = {}
    for pkg in sorted(packages_with_paths):
        paths = packages_with_paths[pkg]
        if isinstance(paths, (str, Path)):
            paths = [paths]
        gone = [str(p) for p in paths if not Path(p).exists()]
        if gone:
            missing[pkg] = gone
    if missing:
        raise MissingSourceError(missing)


def package_version(package: str) -> str | None:
    """The installed version (``dpkg-query -W -f '${Version}' PKG``), or None without dpkg or the package."""
    if shutil.which("dpkg-query") is None:
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ----------------------------------------------------------------------------- licences


@dataclass(frozen=True)
class CopyrightStanza:
    """One ``Files:`` paragraph of a Debian copyright file: which files, whose, and the licence name."""

    files: tuple[str, ...]
    copyright: str
    licence: str


def _paragraph_fields(paragraph: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in paragraph.splitlines():
        if line[:1] in (" ", "\t"):
            if key is not None:
                fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


@functools.lru_cache(maxsize=32)
def copyright_licences(package: str, doc_dir: str | Path = DOC_DIR) -> tuple[CopyrightStanza, ...]:
    """The ``Files:`` stanzas of ``doc_dir/PACKAGE/copyright``.

    Machine-readable (DEP-5) files are parsed exactly. Free-form ones (espeak-ng's) yield one ``*`` stanza
    with the GNU GPL version named in the text (e.g. ``GPL-3+``), or ``unknown``. Missing file: empty.
    """
    path = Path(doc_dir) / package / "copyright"
    if not path.is_file():
        return ()
    text = path.read_text(errors="replace")
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if paragraphs and "Format" in _paragraph_fields(paragraphs[0]):
        stanzas = []
        for para in paragraphs:
            fields = _paragraph_fields(para)
            if "Files" in fields and "License" in fields:
                holders = "; ".join(s.strip() for s in fields.get("Copyright", "").splitlines() if s.strip())
                stanzas.append(CopyrightStanza(tuple(fields["Files"].split()), holders,
                                               fields["License"].splitlines()[0].strip()))
        return tuple(stanzas)
    flat = " ".join(text.split())
    m = re.search(r"GNU General Public License as published by the Free Software Foundation; either version "
                  r"(\d) of the License, or \(at your option\) any later version", flat)
    licence = f"GPL-{m.group(1)}+" if m else "unknown"
    return (CopyrightStanza(("*",), "", licence),)


def licence_of(package: str, path: str = "x", doc_dir: str | Path = DOC_DIR) -> str:
    """The licence of ``path`` (a path in the upstream source tree) per the package's copyright file.

    As in DEP-5, the last stanza whose ``Files:`` pattern matches wins; ``unknown`` when none does.
    """
    licence = "unknown"
    for stanza in copyright_licences(package, str(doc_dir)):
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in stanza.files):
            licence = stanza.licence
    return licence


def cc_licence_id(text: str) -> str:
    """Short id of a Creative Commons licence written out in words (as OpenSFX entries do)."""
    t = text.lower()
    if "zero" in t or "cc0" in t:
        return "CC0-1.0"
    m = re.search(r"(\d\.\d)", t)
    version = m.group(1) if m else "3.0"
    if "sharealike" in t.replace("-", "").replace(" ", ""):
        return f"CC-BY-SA-{version}"
    if "attribution" in t:
        return f"CC-BY-{version}"
    if "public domain" in t:
        return "public-domain"
    return "unknown"


# ----------------------------------------------------------------------------- recordings


@dataclass(eq=False)
class Recording:
    """One source recording: float32 mono ``audio`` at ``sample_rate``, where it came from and its licence."""

    id: str  # stable id, e.g. "opensfx:osfx_07", "asterisk:digits/5", "pocketsphinx:cards/001"
    audio: np.ndarray
    sample_rate: int
    package: str
    licence: str
    speaker: str | None = None  # speech only
    title: str = ""
    credit: str = ""  # attribution, where the source gives one
    path: str = ""
    text: str | None = None  # transcription, where the package ships one

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def _frozen(audio: np.ndarray) -> np.ndarray:
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    audio.setflags(write=False)
    return audio


def _read_wav(data: str | Path | bytes) -> tuple[np.ndarray, int]:
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    return _frozen(audio.mean(axis=1)), int(rate)


@dataclass(eq=False)
class OpenSfxEntry:
    """One entry of ``opensfx.cat``."""

    index: int
    name: str  # the whole description, e.g. '"Ferry horn". Original "..." by Leon Milo. ... License: ...'
    title: str  # "Ferry horn"
    credit: str  # the part between the title and "License:"
    licence: str  # short id: CC0-1.0, CC-BY-3.0, CC-BY-SA-3.0
    licence_text: str  # as written, e.g. "Creative Commons Attribution 3.0 Unported."
    filename: str  # the entry's source file, e.g. "src/wav/osfx_07.wav"
    audio: np.ndarray  # float32 mono; empty for the catalogue's placeholder entries
    sample_rate: int


def parse_opensfx_name(name: str) -> tuple[str, str, str]:
    """Split an entry description into (title, credit, licence text)."""
    m = re.match(r'\s*"([^"]*)"\.?\s*(.*)$', name, flags=re.S)
    title, rest = (m.group(1), m.group(2)) if m else ("", name)
    credit, _, licence = rest.partition("License:")
    return title.strip(), credit.strip(), licence.strip()


def _cat_string(data: bytes, pos: int, where: str) -> tuple[str, int]:
    if pos >= len(data):
        raise ValueError(f"{where}: truncated at byte {pos}")
    n = data[pos]
    raw = data[pos + 1: pos + 1 + n]
    if len(raw) != n:
        raise ValueError(f"{where}: truncated string at byte {pos}")
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace"), pos + 1 + n


def read_opensfx(cat: str | Path = OPENSFX_CAT) -> list[OpenSfxEntry]:
    """Parse OpenTTD's sound catalogue (the format of OpenTTD's ``catcodec``), all entries in catalogue order.

    Layout, all integers little-endian:

    * a table of ``(uint32 offset | 0x80000000, uint32 size)`` pairs, one per entry; the table ends where the
      first entry begins, so ``count = (first offset & 0x7fffffff) / 8``; the high bit marks the "new"
      format whose entries carry a description and a file name;
    * at each offset: ``uint8 n`` and ``n`` bytes of NUL-terminated description
      (``"Title". credits. License: <licence>.``), then ``size`` bytes that are a complete RIFF WAVE file
      (PCM; OpenSFX uses 44.1 kHz 16-bit mono; some carry LIST/id3 chunks after the data), then one
      separator byte (0), then ``uint8 m`` and ``m`` bytes of NUL-terminated source file name
      (``src/wav/osfx_NN.wav``).
    """
    path = Path(cat)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an OpenTTD sound catalogue")
    first = struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF
    if first % 8 or first == 0 or first > len(data):
        raise ValueError(f"{path}: not an OpenTTD sound catalogue (first offset {first})")
    entries = []
    for i in range(first // 8):
        offset, size = struct.unpack_from("<II", data, 8 * i)
        offset &= 0x7FFFFFFF
        where = f"{path} entry {i}"
        name, pos = _cat_string(data, offset, where)
        riff = data[pos: pos + size]
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE" or len(riff) != size:
            raise ValueError(f"{where}: no RIFF WAVE data at byte {pos}")
        filename = ""
        if pos + size + 1 < len(data):
            filename, _ = _cat_string(data, pos + size + 1, where)
        data_size = _riff_data_size(riff)
        if data_size == 0:
            audio, rate = _frozen(np.zeros(0)), struct.unpack_from("<I", riff, 24)[0]
        else:
            audio, rate = _read_wav(riff)
        title, credit, licence_text = parse_opensfx_name(name)
        entries.append(OpenSfxEntry(i, name, title, credit, cc_licence_id(licence_text), licence_text,
                                    filename, audio, int(rate)))
    return entries


def _riff_data_size(riff: bytes) -> int:
    pos = 12
    while pos + 8 <= len(riff):
        chunk, size = riff[pos: pos + 4], struct.unpack_from("<I", riff, pos + 4)[0]
        if chunk == b"data":
            return size
        pos += 8 + size + (size & 1)
    return 0


@functools.lru_cache(maxsize=4)
def opensfx_recordings(cat: str = str(OPENSFX_CAT)) -> tuple[Recording, ...]:
    """The non-empty OpenSFX entries as ``Recording`` (id ``opensfx:osfx_NN`` from the entry's file name)."""
    out = []
    for e in read_opensfx(cat):
        if len(e.audio) == 0:
            continue
        stem = Path(e.filename).stem or f"osfx_{e.index:02d}"
        out.append(Recording(f"opensfx:{stem}", e.audio, e.sample_rate, OPENSFX_PACKAGE, e.licence,
                             title=e.title, credit=e.credit, path=f"{cat}#{e.index}"))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def simutrans_recordings(sound_dir: str = str(SIMUTRANS_SOUND_DIR)) -> tuple[Recording, ...]:
    """simutrans-pak64's ``*.wav`` sounds (sorted by name; id ``simutrans:NAME``)."""
    licence = licence_of(SIMUTRANS_PACKAGE, "pak64/sound/x.wav")
    out = []
    for path in sorted(Path(sound_dir).glob("*.wav")):
        audio, rate = _read_wav(path)
        out.append(Recording(f"simutrans:{path.stem}", audio, rate, SIMUTRANS_PACKAGE, licence,
                             title=path.stem, path=str(path)))
    return tuple(out)


def _tuxpaint_titles(txt: Path) -> dict[str, str]:
    """A stamp's descriptions by language from its ``<name>.txt``: the first line is English (``en``), the others
    read ``<lang>.utf8=<text>``."""
    lines = txt.read_text(errors="replace").splitlines() if txt.is_file() else []
    titles = {"en": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        key, sep, text = line.partition("=")
        if sep and key.endswith(".utf8"):
            titles[key[: -len(".utf8")]] = text.strip()
    return titles


def read_tuxpaint_sound(path: str | Path, stamps_dir: str | Path = TUXPAINT_STAMPS_DIR,
                        title: str = "") -> Recording:
    """One OGG Vorbis file of tuxpaint-stamps-default as a mono ``Recording`` (id ``tuxpaint:REL``, ``REL`` the path
    under ``stamps_dir`` without ``.ogg``). Stereo files are averaged; an unreadable file raises ``ValueError``."""
    path, root = Path(path), Path(stamps_dir)
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{path}: not readable as OGG Vorbis ({e}); reinstall {TUXPAINT_PACKAGE} "
                         f"(apt-get install --reinstall -y {TUXPAINT_PACKAGE})") from e
    rel = path.relative_to(root).as_posix()[: -len(".ogg")]
    return Recording(f"tuxpaint:{rel}", _frozen(audio.mean(axis=1)), int(rate), TUXPAINT_PACKAGE,
                     licence_of(TUXPAINT_PACKAGE, "stamps/x.ogg"), title=title or rel, path=str(path))


@functools.lru_cache(maxsize=4)
def tuxpaint_recordings(stamps_dir: str = str(TUXPAINT_STAMPS_DIR)) -> tuple[Recording, ...]:
    """The stamps' own sound effects in tuxpaint-stamps-default, sorted by path (id ``tuxpaint:REL``, e.g.
    ``tuxpaint:animals/mammals/dogs/dog``).

    A stamp ``<name>`` is described by ``<name>.txt`` (its first line, e.g. "A dog.", is the title); its sound
    effect is ``<name>.ogg`` beside it. Spoken descriptions (``<name>_desc*.ogg``, see ``tuxpaint_descriptions``)
    and spoken names (``<name>_<locale>.ogg``) have no ``.txt`` of their own and are left out. Some files are
    digital silence (kept here: callers decide).
    """
    root = Path(stamps_dir)
    out = []
    for path in sorted(root.rglob("*.ogg")):
        described = path.with_suffix(".txt")
        if described.is_file():
            title = _tuxpaint_titles(described).get("en", "")
            out.append(read_tuxpaint_sound(path, root, title))
    return tuple(out)


_TUXPAINT_DESCRIPTION = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<lang>[a-z]{2,3}(?:_[A-Z]{2})?))?\.ogg$")


@functools.lru_cache(maxsize=4)
def tuxpaint_descriptions(stamps_dir: str = str(TUXPAINT_STAMPS_DIR)) -> dict[str, tuple[tuple[str, str], ...]]:
    """The stamps' spoken descriptions (read speech, ``<name>_desc_<lang>.ogg``; ``<name>_desc.ogg`` is English),
    by language code: sorted ``(path, text)`` pairs, ``text`` being the description in that language from the
    stamp's ``<name>.txt`` ("" where it has none). Nothing is decoded (``read_tuxpaint_sound`` reads one).

    About 7400 files: some 900 each in fr, ro, ru, ca, bg and es, 700 in be and el, 300 in da, fewer than 100 in
    lt, nl, en and ml. The speakers are not named in the package.
    """
    root = Path(stamps_dir)
    out: dict[str, list[tuple[str, str]]] = {}
    titles: dict[Path, dict[str, str]] = {}
    for path in sorted(root.rglob("*_desc*.ogg")):
        m = _TUXPAINT_DESCRIPTION.match(path.name)
        if m is None:  # e.g. a doubled extension: not a description file of the usual form
            continue
        lang = m.group("lang") or "en"
        txt = path.with_name(m.group("stamp") + ".txt")
        if txt not in titles:
            titles[txt] = _tuxpaint_titles(txt)
        out.setdefault(lang, []).append((str(path), titles[txt].get(lang, "")))
    return {lang: tuple(files) for lang, files in sorted(out.items())}


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    stem = rel[:-4] if rel.endswith(".wav") else rel
    return any(fnmatch.fnmatchcase(stem, p) for p in patterns)


@functools.lru_cache(maxsize=4)
def asterisk_recordings(sound_dir: str = str(ASTERISK_DIR),
                        exclude: tuple[str, ...] = ASTERISK_NOT_SPEECH) -> tuple[Recording, ...]:
    """Asterisk's prompts (``**/*.wav`` sorted by relative path; id ``asterisk:REL`` without ``.wav``)."""
    root = Path(sound_dir)
    licence = licence_of(ASTERISK_PACKAGE, "x.wav")
    out = []
    for path in sorted(root.rglob("*.wav")):
        rel = path.relative_to(root).as_posix()
        if _excluded(rel, exclude):
            continue
        audio, rate = _read_wav(path)
        out.append(Recording(f"asterisk:{rel[:-4]}", audio, rate, ASTERISK_PACKAGE, licence,
                             speaker="allison", title=rel[:-4], path=str(path)))
    return tuple(out)


def _transcriptions(root: Path) -> dict[str, str]:
    """``<s> words </s> (utterance-id)`` lines of the test sets' transcription files, by utterance id."""
    texts = {}
    for path in sorted(root.rglob("*transcription")):
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
            if m:
                texts[m.group(2).strip()] = " ".join(m.group(1).split())
    return texts


@functools.lru_cache(maxsize=4)
def pocketsphinx_recordings(data_dir: str = str(POCKETSPHINX_DIR)) -> tuple[Recording, ...]:
    """The speech recordings of pocketsphinx-testdata (see ``POCKETSPHINX_SPEECH``), sorted by path."""
    root = Path(data_dir)
    licence = licence_of(POCKETSPHINX_PACKAGE, "test/data/x.wav")
    texts = _transcriptions(root)
    out, seen = [], set()
    for pattern, speaker in POCKETSPHINX_SPEECH:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if rel in seen:
                continue
            seen.add(rel)
            if path.suffix == ".raw":
                pcm = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
                audio, rate = _frozen(pcm), POCKETSPHINX_RAW_RATE
            else:
                audio, rate = _read_wav(path)
            stem = rel.rsplit(".", 1)[0]
            out.append(Recording(f"pocketsphinx:{stem}", audio, rate, POCKETSPHINX_PACKAGE, licence,
                                 speaker=speaker, title=stem, path=str(path), text=texts.get(path.stem)))
    return tuple(sorted(out, key=lambda r: r.id))


def espeak_ng(text: str, voice: str, speed: int | None = None, pitch: int | None = None,
              binary: str | Path = ESPEAK_NG) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with espeak-ng (``voice`` as for ``-v``, e.g. ``en-us+f2``); float32 mono and rate.

    The output is deterministic for a given espeak-ng version, text and settings.
    """
    cmd = [str(binary), "-v", voice, "--stdout"]
    if speed is not None:
        cmd += ["-s", str(int(speed))]
    if pitch is not None:
        cmd += ["-p", str(int(pitch))]
    out = subprocess.run(cmd + ["--", text], capture_output=True, timeout=120)
    if out.returncode != 0 or len(out.stdout) <= 44:
        msg = out.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng -v {voice} failed ({msg or 'no audio'}); is the voice installed?")
    audio, rate = sf.read(io.BytesIO(out.stdout), dtype="float32", always_2d=True)
    return _frozen(audio.mean(axis=1)), int(rate)


# ----------------------------------------------------------------------------- signal helpers


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio's sinc resampler (``torchaudio.functional.resample``'s
    kernel, built once per rate pair), computed in float64 so results do not depend on CPU kernels;
    float32 out."""
    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    import torch

    x = torch.from_numpy(np.asarray(audio, dtype=np.float64))
    with torch.no_grad():
        return _resampler(int(from_rate), int(to_rate))(x).numpy().astype(np.float32)


@functools.lru_cache(maxsize=16)
def _resampler(from_rate: int, to_rate: int):
    import torch
    import torchaudio.transforms as T

    return T.Resample(from_rate, to_rate, dtype=torch.float64)


def frame_levels_db(audio: np.ndarray, sample_rate: int, frame_s: float = 0.01) -> np.ndarray:
    """RMS level (dBFS) of consecutive frames; the last partial frame is included."""
    n = max(1, int(round(frame_s * sample_rate)))
    frames = -(-len(audio) // n)
    padded = np.zeros(frames * n, dtype=np.float64)
    padded[: len(audio)] = audio
    power = (padded.reshape(frames, n) ** 2).mean(axis=1)
    return 10 * np.log10(power + 1e-12)


def trim_silence(audio: np.ndarray, sample_rate: int, *, relative_db: float = -40.0, floor_db: float = -65.0,
                 max_gap_s: float | None = 0.4, pad_s: float = 0.05, frame_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing silence and shorten silent gaps longer than ``max_gap_s`` to ``max_gap_s``.

    A 10 ms frame is silent when its level is ``relative_db`` below the loudest frame (or under ``floor_db``
    dBFS); ``pad_s`` of silence is kept at either end. ``max_gap_s=None`` keeps inner gaps.
    Returns an empty array when nothing is above the thresholds.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) == 0:
        return audio
    levels = frame_levels_db(audio, sample_rate, frame_s)
    active = levels > max(levels.max() + relative_db, floor_db)
    if not active.any():
        return audio[:0]
    n = max(1, int(round(frame_s * sample_rate)))
    idx = np.flatnonzero(active)
    pad = int(round(pad_s / frame_s))
    first, last = max(idx[0] - pad, 0), min(idx[-1] + pad, len(levels) - 1)
    keep = np.zeros(len(levels), dtype=bool)
    keep[first: last + 1] = True
    if max_gap_s is not None:
        max_gap = max(1, int(round(max_gap_s / frame_s)))
        gaps = np.flatnonzero(np.diff(idx) > max_gap + 1)
        for g in gaps:  # silent frames idx[g]+1 .. idx[g+1]-1: keep max_gap of them, half at each side
            start, stop = idx[g] + 1, idx[g + 1]
            keep[start + max_gap // 2: stop - (max_gap - max_gap // 2)] = False
    mask = np.repeat(keep, n)[: len(audio)]
    return audio[mask]


# ----------------------------------------------------------------------------- two-stem clips
PEAK = 10 ** (-1 / 20)  # stored clips peak at -1 dBFS at most


def quantize_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 a, b and their exact int16 sum, both scaled down together when the sum would peak above -1 dBFS."""
    from ..shards import to_int16

    peak = float(np.max(np.abs(a + b)))
    if peak > PEAK:
        a, b = a * (PEAK / peak), b * (PEAK / peak)
    a16, b16 = to_int16(a), to_int16(b)
    total = a16.astype(np.int32) + b16.astype(np.int32)
    assert np.abs(total).max() <= 32767, "peak guard failed"
    return a16, b16, total.astype(np.int16)


def quantize_stems(stems: Iterable[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, float]:
    """``quantize_pair`` for any number of stems: int16 stems, their exact int16 sum and the common scale applied.

    All stems are scaled down together (scale < 1) when their float sum would peak above -1 dBFS, then each is
    rounded to int16 and the mix is the integer sum of the rounded stems, so ``mix == sum(stems)`` holds exactly.
    """
    from ..shards import to_int16

    stems = [np.asarray(s, dtype=np.float64) for s in stems]
    if not stems or len({len(s) for s in stems}) != 1:
        lengths = [len(s) for s in stems]
        raise ValueError(f"quantize_stems needs one or more stems of equal length, got lengths {lengths}")
    peak = float(np.max(np.abs(np.sum(stems, axis=0))))
    scale = PEAK / peak if peak > PEAK else 1.0
    out = [to_int16(s * scale) for s in stems]
    total = np.sum([s.astype(np.int32) for s in out], axis=0)
    assert np.abs(total).max() <= 32767, "peak guard failed"
    return out, total.astype(np.int16), scale


def ratio_db(a16: np.ndarray, b16: np.ndarray) -> float:
    """Energy ratio of two stored stems, dB."""
    a, b = a16.astype(np.float64), b16.astype(np.float64)
    return float(10 * np.log10(np.sum(a * a) / max(np.sum(b * b), 1e-20)))


def level_db(x16: np.ndarray) -> float:
    """RMS level of a stored int16 stem, dBFS."""
    x = x16.astype(np.float64) / 32768.0
    return float(10 * np.log10(np.mean(np.square(x)) + 1e-20)) if len(x) else -200.0
