"""Regenerate the two binary demo documents (annual-report-2025.pdf, seed-swap-stallholders.docx).

    python tailorlm/kb/demo/make_binary_docs.py

Deterministic: the same bytes every run. The PDF is written by hand (a few PDF objects with the
standard Helvetica font), so no PDF-writing library is needed; the .docx needs python-docx.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

REPORT = [  # (heading or None, paragraph lines): the annual report, one page per section
    ("Brambleholt Seed Library - Annual report 2025", [
        "Invented for the tailorlm knowledge-base demo. None of these people or places exist.",
    ]),
    ("The year in numbers", [
        "At the end of the 2025 season the library had 1,260 members and 94 volunteers,",
        "and the collection held 412 varieties, including 38 heirloom tomatoes and 27 beans.",
        "Members borrowed 6,830 seed packets between 1 March and 30 November.",
        "Saved seed came back for 71 per cent of the packets borrowed, our best return rate so far.",
    ]),
    ("The Vault", [
        "The Head Seed Keeper, Dagny Ferrow, and her two Vault helpers ran germination tests on",
        "139 varieties this year. Eleven batches sprouted fewer than seven in ten and were sent",
        "out to grow-out gardeners for regrowing. The cold room compressor was replaced in July;",
        "the Vault stayed at 4 C and 30% humidity throughout the work.",
    ]),
    ("Money", [
        "Income came from memberships (GBP 9,140), workshops (GBP 1,905), the shop (GBP 1,212) and",
        "donations (GBP 2,300). The largest cost was electricity for the Vault. The tool fund paid",
        "for a new broadfork after the old one broke during the October dig.",
    ]),
    ("Thanks", [
        "Our thanks to every volunteer, to Brambleholt Market Hall for hosting the Great Brambleholt",
        "Seed Swap, and to the 312 people who brought seed to it in March.",
    ]),
]

STALLHOLDERS = [  # (style, text): the stallholder guide for the Great Brambleholt Seed Swap
    ("Title", "Great Brambleholt Seed Swap: guide for stallholders"),
    ("Normal", "Invented for the tailorlm knowledge-base demo."),
    ("Heading 1", "Before the day"),
    ("Normal", "Stalls are free. Book a stall with the volunteer coordinator, Ines Halloran, by the "
               "end of February; there are 40 tables in Brambleholt Market Hall and they always fill up."),
    ("Normal", "Pack your seed in paper envelopes of about a teaspoon each, and write the variety, the "
               "harvest year and where it was grown on every envelope, just as for a donation to the library."),
    ("Heading 1", "On the day"),
    ("Normal", "The Swap opens to the public at 09:00 and closes at 15:00. Stallholders may set up from "
               "07:30 through the loading door on Corn Street. Tables are numbered; your number is on your "
               "booking email."),
    ("Normal", "Swapping is one envelope for one envelope, but nobody is turned away for having nothing to "
               "give: spare envelopes can always be given away."),
    ("Heading 1", "What may not be swapped"),
    ("Normal", "The same rule as the library's: open-pollinated seed only, so no F1 hybrids and no treated "
               "seeds. Plants, cuttings and bulbs are welcome on the plant table by the stage, but not on "
               "the seed tables."),
    ("Heading 1", "After the day"),
    ("Normal", "Seed left over at 15:00 can be donated to the library's stall, which takes it back to the "
               "Vault for checking by the Head Seed Keeper."),
]


def pdf_bytes() -> bytes:
    """A minimal PDF 1.4: one page per section, Helvetica, WinAnsi text."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    pages = []
    for heading, lines in REPORT:
        ops = ["BT", "/F2 14 Tf", "72 760 Td", "18 TL", f"({esc(heading)}) Tj", "T*", "/F1 11 Tf", "14 TL"]
        ops += [f"T* ({esc(line)}) Tj" for line in lines]
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252")
        pages.append(stream)
    # object numbers: 1 catalog, 2 pages, 3 font regular, 4 font bold, then (page, content) pairs
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for base in ("Helvetica", "Helvetica-Bold"):
        objects.append(f"<< /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>".encode())
    for i, stream in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {6 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def docx_bytes() -> bytes:
    """python-docx writes the document; the zip is then rewritten with fixed timestamps."""
    import datetime as dt

    import docx

    document = docx.Document()
    props = document.core_properties
    props.author, props.title = "Brambleholt Seed Library", STALLHOLDERS[0][1]
    props.created = props.modified = dt.datetime(2026, 1, 1)
    props.last_modified_by, props.revision = "", 1
    for style, text in STALLHOLDERS:
        document.add_paragraph(text, style=style)
    raw = io.BytesIO()
    document.save(raw)
    fixed = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist()):
            dst.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), src.read(name),
                         compress_type=zipfile.ZIP_DEFLATED)
    return fixed.getvalue()


def main() -> None:
    (HERE / "annual-report-2025.pdf").write_bytes(pdf_bytes())
    (HERE / "seed-swap-stallholders.docx").write_bytes(docx_bytes())


if __name__ == "__main__":
    main()
