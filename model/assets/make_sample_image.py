"""Draws model/assets/sample.png (640x480): a simple outdoor scene, so the CLI has an image to describe.

Run: python model/assets/make_sample_image.py
"""

from pathlib import Path

from PIL import Image, ImageDraw

W, H = 640, 480


def draw() -> Image.Image:
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    for y in range(300):  # sky: light blue at the horizon, deeper blue at the top
        f = y / 300
        d.line([(0, y), (W, y)], fill=(int(70 + 110 * f), int(130 + 90 * f), int(220 + 30 * f)))
    for y in range(300, H):  # grass, darker towards the viewer
        f = (y - 300) / (H - 300)
        d.line([(0, y), (W, y)], fill=(int(90 - 40 * f), int(170 - 60 * f), int(60 - 20 * f)))
    d.ellipse([500, 40, 580, 120], fill=(255, 220, 60))  # sun
    d.polygon([(0, 300), (120, 170), (230, 300)], fill=(110, 110, 130))  # mountains
    d.polygon([(150, 300), (300, 140), (450, 300)], fill=(95, 95, 120))
    d.polygon([(270, 175), (300, 140), (330, 175)], fill=(245, 245, 250))  # snow cap
    d.rectangle([380, 260, 520, 380], fill=(200, 60, 50))  # house
    d.polygon([(370, 262), (450, 200), (530, 262)], fill=(120, 40, 30))  # roof
    d.rectangle([435, 320, 465, 380], fill=(90, 50, 20))  # door
    d.rectangle([395, 285, 425, 310], fill=(180, 220, 250))  # window
    d.rectangle([95, 300, 115, 390], fill=(100, 60, 25))  # tree trunk
    d.ellipse([55, 220, 155, 320], fill=(30, 120, 40))  # tree crown
    for x, y in ((80, 60), (130, 80), (250, 50)):  # clouds
        d.ellipse([x, y, x + 70, y + 30], fill=(250, 250, 255))
        d.ellipse([x + 30, y - 12, x + 90, y + 24], fill=(250, 250, 255))
    return img


if __name__ == "__main__":
    out = Path(__file__).with_name("sample.png")
    draw().save(out, optimize=True)
    print(out, out.stat().st_size, "bytes")
