// The loss-curve figure and its two renderings: the SVG and the PNG (cairo)
// must show the same shapes at the same places.

#include "gpt2_test_util.h"

#include "figure.h"
#include "plot.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

#ifdef FLORA_GPT2_HAVE_CAIRO
#include <cairo.h>
#endif

namespace flora::gpt2 {
namespace {

// Two runs of 60 steps with noisy decreasing losses, evaluated every 20.
std::vector<RunResult> synthetic_runs() {
  std::vector<RunResult> runs;
  for (const char* name : {"adam", "flora"}) {
    RunResult r;
    r.name = name;
    r.initial_eval_loss = 6.0;
    const double rate = r.name == "adam" ? 0.03 : 0.05;
    for (int step = 1; step <= 60; ++step) {
      StepRecord rec;
      rec.step = step;
      rec.train_loss = 1.5 + 4.5 * std::exp(-rate * step) + 0.1 * std::sin(step * 1.7);
      if (step % 20 == 0) {
        rec.eval_loss = 1.6 + 4.4 * std::exp(-rate * step);
      }
      r.records.push_back(rec);
    }
    runs.push_back(r);
  }
  return runs;
}

template <typename T>
std::vector<T> shapes_of(const Figure& f) {
  std::vector<T> out;
  for (const auto& s : f.shapes) {
    if (const auto* t = std::get_if<T>(&s)) {
      out.push_back(*t);
    }
  }
  return out;
}

TEST(Gpt2Plot, FigureHoldsEveryCurveInsideItsAxes) {
  const auto runs = synthetic_runs();
  const auto f = loss_figure(runs);
  EXPECT_EQ(f.width, 880);
  EXPECT_EQ(f.height, 540);
  const auto discs = shapes_of<Disc>(f);
  // Per run: the initial and 3 held-out evaluations, plus a legend marker.
  EXPECT_EQ(discs.size(), 2u * (1 + 3 + 1));
  for (const auto& d : discs) {
    EXPECT_GT(d.centre.x, 0);
    EXPECT_LT(d.centre.x, f.width);
    EXPECT_GT(d.centre.y, 0);
    EXPECT_LT(d.centre.y, f.height);
  }
  // The per-step curves have one point per step; lower loss is lower on
  // the page (larger y).
  size_t per_step = 0;
  for (const auto& line : shapes_of<Polyline>(f)) {
    if (line.points.size() == 60) {
      ++per_step;
      EXPECT_GT(line.points.back().y, line.points.front().y);
      EXPECT_GT(line.points.back().x, line.points.front().x);
    }
  }
  EXPECT_EQ(per_step, 2u * 2); // raw and smoothed, per run
  std::vector<std::string> texts;
  for (const auto& label : shapes_of<Label>(f)) {
    texts.push_back(label.text);
  }
  for (const char* want : {"adam train", "adam eval", "flora train", "flora eval", "step", "loss (nats/token)"}) {
    EXPECT_NE(std::find(texts.begin(), texts.end(), want), texts.end()) << want;
  }
}

TEST(Gpt2Plot, SvgDrawsEveryShapeOfTheFigure) {
  const auto f = loss_figure(synthetic_runs());
  const auto svg = render_svg(f);
  const std::regex circle(R"re(<circle cx="([0-9.]+)" cy="([0-9.]+)" r="([0-9.]+)" fill="#([0-9a-f]{6})")re");
  const auto discs = shapes_of<Disc>(f);
  size_t i = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), circle); it != std::sregex_iterator(); ++it, ++i) {
    ASSERT_LT(i, discs.size());
    EXPECT_NEAR(std::stod((*it)[1]), discs[i].centre.x, 0.005);
    EXPECT_NEAR(std::stod((*it)[2]), discs[i].centre.y, 0.005);
    char color[8];
    std::snprintf(color, sizeof(color), "%02x%02x%02x", discs[i].color.r, discs[i].color.g, discs[i].color.b);
    EXPECT_EQ((*it)[4].str(), color);
  }
  EXPECT_EQ(i, discs.size());
  size_t lines = 0;
  for (const auto& line : shapes_of<Polyline>(f)) {
    lines += line.points.size() >= 2;
  }
  const std::regex polyline("<polyline ");
  EXPECT_EQ(static_cast<size_t>(std::distance(std::sregex_iterator(svg.begin(), svg.end(), polyline),
                                              std::sregex_iterator())),
            lines);
  for (const auto& label : shapes_of<Label>(f)) {
    EXPECT_NE(svg.find(">" + label.text + "</text>"), std::string::npos) << label.text;
  }
}

#ifdef FLORA_GPT2_HAVE_CAIRO
struct PngImage {
  int width = 0, height = 0;
  std::vector<uint32_t> pixels; // 0x00RRGGBB
  Rgb at(double x, double y) const {
    const uint32_t p = pixels[static_cast<size_t>(std::floor(y)) * width + static_cast<size_t>(std::floor(x))];
    return {static_cast<uint8_t>(p >> 16), static_cast<uint8_t>(p >> 8), static_cast<uint8_t>(p)};
  }
};

PngImage decode_png(const std::string& bytes) {
  struct Reader {
    const std::string* bytes;
    size_t at = 0;
  } reader{&bytes};
  auto* surface = cairo_image_surface_create_from_png_stream(
      [](void* closure, unsigned char* data, unsigned int length) {
        auto* r = static_cast<Reader*>(closure);
        if (r->at + length > r->bytes->size()) {
          return CAIRO_STATUS_READ_ERROR;
        }
        std::memcpy(data, r->bytes->data() + r->at, length);
        r->at += length;
        return CAIRO_STATUS_SUCCESS;
      },
      &reader);
  PngImage image;
  if (cairo_surface_status(surface) == CAIRO_STATUS_SUCCESS) {
    cairo_surface_flush(surface);
    image.width = cairo_image_surface_get_width(surface);
    image.height = cairo_image_surface_get_height(surface);
    const int stride = cairo_image_surface_get_stride(surface);
    const unsigned char* data = cairo_image_surface_get_data(surface);
    for (int y = 0; y < image.height; ++y) {
      for (int x = 0; x < image.width; ++x) {
        uint32_t p;
        std::memcpy(&p, data + static_cast<size_t>(y) * stride + 4 * x, 4);
        image.pixels.push_back(p & 0xFFFFFF);
      }
    }
  }
  cairo_surface_destroy(surface);
  return image;
}

int distance(Rgb a, Rgb b) {
  return std::abs(a.r - b.r) + std::abs(a.g - b.g) + std::abs(a.b - b.b);
}

TEST(Gpt2Plot, PngDrawsTheFigureWhereTheSvgDoes) {
  ASSERT_TRUE(png_supported());
  const auto runs = synthetic_runs();
  const auto f = loss_figure(runs);
  const auto png = render_png(f);
  ASSERT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const auto image = decode_png(png);
  ASSERT_EQ(image.width, f.width);
  ASSERT_EQ(image.height, f.height);
  EXPECT_EQ(distance(image.at(2, 2), {255, 255, 255}), 0); // the page
  // The markers of the run drawn last (no later shape covers them), in the
  // plot and in the legend, are where the figure (and the SVG) put them.
  const auto discs = shapes_of<Disc>(f);
  int checked = 0;
  for (const auto& d : discs) {
    if (d.color.r == discs.back().color.r && d.color.g == discs.back().color.g) {
      EXPECT_LE(distance(image.at(d.centre.x, d.centre.y), d.color), 6) << d.centre.x << "," << d.centre.y;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 5);
  // Text is drawn with a real font: the title's line has dark pixels.
  int dark = 0;
  for (const auto& label : shapes_of<Label>(f)) {
    if (label.text.rfind("GPT-2", 0) == 0) {
      for (int x = 0; x < image.width; ++x) {
        for (int dy = -10; dy <= 2; ++dy) {
          dark += distance(image.at(x, label.at.y + dy), {255, 255, 255}) > 300;
        }
      }
    }
  }
  EXPECT_GT(dark, 100);
}
#else
TEST(Gpt2Plot, WithoutCairoThereIsNoPng) {
  EXPECT_FALSE(png_supported());
  testing::expect_error([] { render_png(loss_figure(synthetic_runs())); }, "no cairo");
}
#endif

} // namespace
} // namespace flora::gpt2
