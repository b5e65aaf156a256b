"""Data job types on real inputs: data.csv_stats, logs.analyze, report.generate and
image.* (real images drawn with Pillow in the test)."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from worker.context import JobContext, JobSettings
from worker.jobs import data, images, logs, reports
from worker.registry import BadArgument

SALES = """region,product,units,price
north,apple,10,1.5
south,apple,4,1.5
north,pear,7,2.0
east,plum,,3.0
south,pear,12,2.0
north,plum,1,3.0
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def ctx(tmp_path: Path, root: Path) -> JobContext:
    return JobContext("job-1", 1, {}, tmp_path / "work", type="test", settings=JobSettings(data_root=root))


# --- data.csv_stats ------------------------------------------------------------------------


def test_csv_stats(ctx: JobContext, root: Path) -> None:
    (root / "sales.csv").write_text(SALES)
    out = data.data_csv_stats({"path": "sales.csv"}, ctx)
    units = [10, 4, 7, 12, 1]
    assert out["rows"] == 6 and out["non_numeric"] == ["region", "product"]
    u = out["columns"]["units"]
    assert u["count"] == 5 and u["missing"] == 1 and u["min"] == 1 and u["max"] == 12 and u["sum"] == 34
    assert u["mean"] == pytest.approx(statistics.fmean(units)) and u["median"] == 7
    assert u["stdev"] == pytest.approx(statistics.stdev(units))
    assert out["columns"]["price"]["mean"] == pytest.approx(13 / 6)


def test_csv_stats_group_by(ctx: JobContext, root: Path) -> None:
    (root / "sales.csv").write_text(SALES)
    out = data.data_csv_stats({"path": "sales.csv", "group_by": "region", "columns": ["units"]}, ctx)
    assert list(out["groups"]) == ["east", "north", "south"]
    north = out["groups"]["north"]
    assert north["rows"] == 3 and north["columns"]["units"]["sum"] == 18 and north["columns"]["units"]["median"] == 7
    assert out["groups"]["east"]["columns"]["units"]["count"] == 0
    assert out["groups"]["south"]["columns"]["units"]["stdev"] == pytest.approx(statistics.stdev([4, 12]))


@pytest.mark.parametrize("content, args, message", [
    (SALES, {"columns": ["nope"]}, "no column 'nope' in the CSV"),
    (SALES, {"group_by": "nope"}, "no column 'nope' in the CSV"),
    (SALES, {"columns": ["region"]}, "column(s) 'region' are not numeric"),
    ("", {}, "is empty (a CSV needs a header row)"),
    ("a,b\n1,2,3\n", {}, "CSV line 2 has 3 cells, the header has 2"),
    ("a,a\n1,2\n", {}, "the CSV header must name every column once"),
])
def test_csv_stats_bad_input(ctx: JobContext, root: Path, content: str, args: dict, message: str) -> None:
    (root / "x.csv").write_text(content)
    with pytest.raises(BadArgument) as info:
        data.data_csv_stats({"path": "x.csv", **args}, ctx)
    assert message in str(info.value)


# --- logs.analyze ---------------------------------------------------------------------------

LOG = """\
10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /index.html HTTP/1.1" 200 2326 "-" "curl/8" 0.010
10.0.0.2 - frank [10/Oct/2024:13:55:40 +0000] "GET /api/items?page=2 HTTP/1.1" 200 512 "-" "Mozilla" 0.030
10.0.0.1 - - [10/Oct/2024:13:55:59 +0000] "POST /api/items HTTP/1.1" 500 17 "-" "curl/8" 0.250
10.0.0.3 - - [10/Oct/2024:13:56:01 +0000] "GET /api/items HTTP/1.1" 404 - "-" "curl/8" 0.005
this line is garbage
10.0.0.1 - - [10/Oct/2024:13:56:30 +0000] "GET /index.html HTTP/1.1" 503 0 "-" "curl/8" 1.500
"""


def test_logs_analyze_combined_with_latency(ctx: JobContext, root: Path) -> None:
    (root / "access.log").write_text(LOG)
    out = logs.logs_analyze({"path": "access.log", "top": 2}, ctx)
    assert out["lines"] == 6 and out["parsed"] == 5 and out["unparsed"] == 1
    assert out["unparsed_samples"] == ["this line is garbage"]
    assert out["status"] == {"200": 2, "404": 1, "500": 1, "503": 1}
    assert out["status_classes"] == {"2xx": 2, "4xx": 1, "5xx": 2}
    assert out["top_paths"] == [["/api/items", 3], ["/index.html", 2]]
    assert out["bytes"] == 2326 + 512 + 17 + 0
    assert out["error_rate"] == 0.4
    assert out["per_minute"] == [
        {"minute": "2024-10-10T13:55+0000", "requests": 3, "errors": 1, "client_errors": 0, "error_rate": 0.3333},
        {"minute": "2024-10-10T13:56+0000", "requests": 2, "errors": 1, "client_errors": 1, "error_rate": 0.5},
    ]
    lat = out["latency_ms"]
    assert lat["count"] == 5 and lat["min"] == 5.0 and lat["max"] == 1500.0 and lat["p50"] == 30.0
    assert lat["p90"] == pytest.approx(250 + 0.6 * 1250)


def test_logs_analyze_common_format_without_latency(ctx: JobContext, root: Path) -> None:
    (root / "c.log").write_text('127.0.0.1 - - [01/Jan/2025:00:00:00 -0500] "GET / HTTP/1.0" 200 10\n')
    out = logs.logs_analyze({"path": "c.log"}, ctx)
    assert out["parsed"] == 1 and out["latency_ms"] is None and out["per_minute"][0]["minute"] == "2025-01-01T00:00-0500"
    (root / "bad.log").write_text("nothing here\n")
    with pytest.raises(BadArgument, match="no line of 'bad.log' is in Common or Combined Log Format"):
        logs.logs_analyze({"path": "bad.log"}, ctx)


# --- report.generate ------------------------------------------------------------------------


def test_html_report_with_inline_svg(ctx: JobContext, root: Path) -> None:
    (root / "sales.csv").write_text(SALES + "<script>,x,100,1\n")
    out = reports.report_generate({"path": "sales.csv", "output": "r/report.html", "label": "region",
                                   "value": "units", "title": "Sales"}, ctx)
    doc = (root / "r/report.html").read_text()
    assert out["bars"][0] == ["<script>", 100.0]
    assert out["bars"][1:] == [["north", 18.0], ["south", 16.0], ["east", 0.0]]
    assert "<svg" in doc and doc.count("<rect") == 4 and "<h1>Sales</h1>" in doc
    assert "<script>" not in doc and "&lt;script&gt;" in doc, "CSV text is escaped"
    assert out["chart_file"] is None


def test_markdown_report_with_png_chart(ctx: JobContext, root: Path) -> None:
    (root / "sales.csv").write_text(SALES)
    out = reports.report_generate({"path": "sales.csv", "output": "report.md", "label": "product",
                                   "agg": "count"}, ctx)
    doc = (root / "report.md").read_text()
    assert out["format"] == "markdown" and out["chart_file"] == "report.png"
    assert "![count by product](report.png)" in doc and "| apple | 2 |" in doc
    with Image.open(root / "report.png") as img:
        assert img.format == "PNG" and img.width > 300
        # Some pixels carry the bar colour.
        assert (0x4E, 0x79, 0xA7) in {c for _, c in img.convert("RGB").getcolors(100000)}


def test_report_bad_columns(ctx: JobContext, root: Path) -> None:
    (root / "sales.csv").write_text(SALES)
    with pytest.raises(BadArgument, match="'value': column 'region' is not numeric"):
        reports.report_generate({"path": "sales.csv", "output": "r.html", "value": "region"}, ctx)
    with pytest.raises(BadArgument, match="'agg' must be one of"):
        reports.report_generate({"path": "sales.csv", "output": "r.html", "agg": "median"}, ctx)


# --- images -----------------------------------------------------------------------------------


def _photo(path: Path, size: tuple[int, int] = (400, 300), mode: str = "RGB") -> None:
    img = Image.new(mode, size, "white" if mode != "RGBA" else (255, 255, 255, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([50, 50, 200, 150], fill=(200, 30, 30) if mode != "L" else 80)
    draw.ellipse([220, 100, 380, 280], fill=(30, 30, 200) if mode != "L" else 160)
    img.save(path)


def test_image_resize(ctx: JobContext, root: Path) -> None:
    _photo(root / "photo.png")
    out = images.image_resize({"path": "photo.png", "width": 200}, ctx)
    assert (out["width"], out["height"]) == (200, 150) and out["original"] == [400, 300]
    assert out["output"] == "photo-200x150.png"
    box = images.image_resize({"path": "photo.png", "width": 100, "height": 100, "output": "box.jpg"}, ctx)
    assert (box["width"], box["height"]) == (100, 75) and box["format"] == "jpeg"
    with Image.open(root / "box.jpg") as img:
        assert img.format == "JPEG" and img.size == (100, 75)
    exact = images.image_resize({"path": "photo.png", "width": 50, "height": 80, "keep_aspect": False}, ctx)
    assert (exact["width"], exact["height"]) == (50, 80)


def test_image_convert_drops_alpha_for_jpeg(ctx: JobContext, root: Path) -> None:
    _photo(root / "logo.png", mode="RGBA")
    out = images.image_convert({"path": "logo.png", "format": "jpeg", "quality": 70}, ctx)
    assert out["from"] == "png" and out["format"] == "jpeg" and out["mode"] == "RGB"
    with Image.open(root / out["output"]) as img:
        assert img.format == "JPEG"
    webp = images.image_convert({"path": "logo.png", "output": "logo.webp"}, ctx)
    assert webp["format"] == "webp"


def test_image_filters(ctx: JobContext, root: Path) -> None:
    _photo(root / "photo.png")
    gray = images.image_filter({"path": "photo.png", "filter": "grayscale"}, ctx)
    with Image.open(root / gray["output"]) as img:
        assert img.mode == "L"
    thumb = images.image_filter({"path": "photo.png", "filter": "thumbnail", "size": 64}, ctx)
    assert max(thumb["width"], thumb["height"]) == 64
    blur = images.image_filter({"path": "photo.png", "filter": "blur", "radius": 4}, ctx)
    with Image.open(root / "photo.png") as a, Image.open(root / blur["output"]) as b:
        # The blurred edge of the red square has intermediate colours the original lacks.
        assert len(b.getcolors(1 << 20)) > len(a.getcolors(1 << 20))
    for name in ("sharpen", "edges", "contour"):
        assert images.image_filter({"path": "photo.png", "filter": name}, ctx)["filter"] == name


def test_images_reject_bad_input(ctx: JobContext, root: Path) -> None:
    (root / "fake.png").write_text("not an image")
    with pytest.raises(BadArgument, match="is not an image Pillow can read"):
        images.image_resize({"path": "fake.png", "width": 10}, ctx)
    _photo(root / "p.png")
    with pytest.raises(BadArgument, match="give 'width', 'height' or both"):
        images.image_resize({"path": "p.png"}, ctx)
    with pytest.raises(BadArgument, match="'filter' must be one of"):
        images.image_filter({"path": "p.png", "filter": "sepia"}, ctx)
    with pytest.raises(BadArgument, match="'format' must be one of"):
        images.image_convert({"path": "p.png", "format": "exe"}, ctx)


def test_decompression_bomb_is_refused(ctx: JobContext, root: Path) -> None:
    # A 1-bit 9000x9000 PNG is tiny on disk but 81 Mpx decoded.
    Image.new("1", (9000, 9000)).save(root / "bomb.png", optimize=True)
    assert (root / "bomb.png").stat().st_size < 50_000
    with pytest.raises(BadArgument, match="more than the 64000000 allowed|not an image Pillow can read"):
        images.image_filter({"path": "bomb.png", "filter": "grayscale"}, ctx)
