#include "plot.h"

#include "file_io.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace flora::gpt2 {
namespace {

constexpr int kWidth = 880;
constexpr int kHeight = 540;
constexpr double kLeft = 70, kRight = 190, kTop = 40, kBottom = 60; // margins of the plot area
constexpr int kSmoothing = 10;

constexpr Rgb kPalette[] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {148, 103, 189}, {255, 127, 14}};
constexpr Rgb kBlack = {0, 0, 0};
constexpr Rgb kGrid = {225, 225, 225};
constexpr Rgb kText = {40, 40, 40};

struct Axis {
  double lo, hi, tick;
};

// Ticks at multiples of 1, 2 or 5 x 10^k, about `target` of them.
Axis nice_axis(double lo, double hi, int target, bool from_zero) {
  if (!(hi > lo)) {
    hi = lo + 1;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double tick = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) {
      tick = m * mag;
      break;
    }
  }
  Axis a;
  a.tick = tick;
  a.lo = from_zero ? 0.0 : std::floor(lo / tick) * tick;
  a.hi = std::ceil(hi / tick) * tick;
  return a;
}

std::string tick_label(double v, double tick) {
  char buffer[32];
  const int decimals = tick >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(tick) - 1e-9));
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, v);
  return buffer;
}

// A 1-pixel line through pixel centres, so that it stays crisp when
// rasterised.
double crisp(double v) {
  return std::floor(v) + 0.5;
}

struct Series {
  std::string name;
  Rgb color;
  std::vector<Point> raw;      // (step, train loss)
  std::vector<Point> smoothed; // centred moving average
  std::vector<Point> eval;     // (step, eval loss)
};

std::vector<Series> make_series(const std::vector<RunResult>& runs) {
  std::vector<Series> out;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    Series s;
    s.name = r.name;
    s.color = kPalette[i % std::size(kPalette)];
    s.eval.push_back({0.0, r.initial_eval_loss});
    for (size_t k = 0; k < r.records.size(); ++k) {
      const auto& rec = r.records[k];
      const auto step = static_cast<double>(rec.step);
      s.raw.push_back({step, rec.train_loss});
      // Centred (shorter at the ends), so that the curve does not lag.
      const size_t lo = k >= kSmoothing / 2 ? k - kSmoothing / 2 : 0;
      const size_t hi = std::min(r.records.size(), k + kSmoothing / 2 + 1);
      double sum = 0;
      for (size_t j = lo; j < hi; ++j) {
        sum += r.records[j].train_loss;
      }
      s.smoothed.push_back({step, sum / static_cast<double>(hi - lo)});
      if (!std::isnan(rec.eval_loss)) {
        s.eval.push_back({step, rec.eval_loss});
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

class Layout {
 public:
  explicit Layout(const std::vector<Series>& series) {
    double max_step = 1, lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& s : series) {
      for (const auto* points : {&s.raw, &s.eval}) {
        for (const auto& p : *points) {
          max_step = std::max(max_step, p.x);
          if (std::isfinite(p.y)) {
            lo = std::min(lo, p.y);
            hi = std::max(hi, p.y);
          }
        }
      }
    }
    if (!std::isfinite(lo)) {
      lo = 0, hi = 1;
    }
    x_ = nice_axis(0, max_step, 8, true);
    y_ = nice_axis(lo, hi, 8, false);
  }

  const Axis& x_axis() const {
    return x_;
  }
  const Axis& y_axis() const {
    return y_;
  }
  double px(double step) const {
    return kLeft + (step - x_.lo) / (x_.hi - x_.lo) * (kWidth - kLeft - kRight);
  }
  double py(double loss) const {
    return kTop + (y_.hi - loss) / (y_.hi - y_.lo) * (kHeight - kTop - kBottom);
  }
  // Non-finite losses (a diverged run) break the line: they are left out.
  std::vector<Point> to_pixels(const std::vector<Point>& data) const {
    std::vector<Point> out;
    out.reserve(data.size());
    for (const auto& p : data) {
      if (std::isfinite(p.y)) {
        out.push_back({px(p.x), py(p.y)});
      }
    }
    return out;
  }

 private:
  Axis x_{}, y_{};
};

} // namespace

Figure loss_figure(const std::vector<RunResult>& runs) {
  const auto series = make_series(runs);
  const Layout layout(series);
  Figure f;
  f.width = kWidth;
  f.height = kHeight;
  auto line = [&](std::vector<Point> points, Rgb color, double width = 1, double opacity = 1, bool dashed = false) {
    f.shapes.push_back(Polyline{std::move(points), color, width, opacity, dashed});
  };
  auto label = [&](double x, double y, std::string text, Anchor anchor, bool vertical = false) {
    f.shapes.push_back(Label{{x, y}, std::move(text), kText, anchor, vertical, 12});
  };
  const double x0 = kLeft, x1 = kWidth - kRight, y0 = kTop, y1 = kHeight - kBottom;

  // Grid, ticks and tick labels; labels sit 4 px below their vertical
  // centre, i.e. on their baseline for a 12 px font.
  const auto& xa = layout.x_axis();
  for (double v = xa.lo; v <= xa.hi + 1e-9 * xa.tick; v += xa.tick) {
    const double x = crisp(layout.px(v));
    line({{x, y0}, {x, y1}}, kGrid);
    line({{x, y1}, {x, y1 + 5}}, kBlack);
    label(x, y1 + 22, tick_label(v, xa.tick), Anchor::middle);
  }
  const auto& ya = layout.y_axis();
  for (double v = ya.lo; v <= ya.hi + 1e-9 * ya.tick; v += ya.tick) {
    const double y = crisp(layout.py(v));
    line({{x0, y}, {x1, y}}, kGrid);
    line({{x0 - 5, y}, {x0, y}}, kBlack);
    label(x0 - 8, y + 4, tick_label(v, ya.tick), Anchor::end);
  }
  line({{crisp(x0), y0}, {crisp(x0), crisp(y1)}, {x1, crisp(y1)}}, kBlack, 1.5);
  label((x0 + x1) / 2, kHeight - 14, "step", Anchor::middle);
  label(24, (y0 + y1) / 2, "loss (nats/token)", Anchor::middle, /*vertical=*/true);
  label((x0 + x1) / 2, 24, "GPT-2 fine-tune: training and held-out loss", Anchor::middle);

  // Curves: every faint per-step line first, so that none hides another
  // run's mean or held-out curve.
  for (const auto& s : series) {
    line(layout.to_pixels(s.raw), s.color, 1, 0.25);
  }
  for (const auto& s : series) {
    line(layout.to_pixels(s.smoothed), s.color, 2);
    const auto eval = layout.to_pixels(s.eval);
    line(eval, s.color, 2, 1, /*dashed=*/true);
    for (const auto& p : eval) {
      f.shapes.push_back(Disc{p, 3.5, s.color});
    }
  }

  // Legend.
  const double lx = x1 + 15;
  double ly = y0 + 10;
  for (const auto& s : series) {
    line({{lx, ly}, {lx + 30, ly}}, s.color, 2);
    label(lx + 38, ly + 4, s.name + " train", Anchor::start);
    ly += 20;
    line({{lx, ly}, {lx + 30, ly}}, s.color, 2, 1, /*dashed=*/true);
    f.shapes.push_back(Disc{{lx + 15, ly}, 3.5, s.color});
    label(lx + 38, ly + 4, s.name + " eval", Anchor::start);
    ly += 28;
  }
  label(lx, ly + 4, "train: faint per step,", Anchor::start);
  label(lx, ly + 18, "solid " + std::to_string(kSmoothing + 1) + "-step centred mean", Anchor::start);
  return f;
}

void write_loss_svg(const std::string& path, const std::vector<RunResult>& runs) {
  write_file_atomic(path, render_svg(loss_figure(runs)));
}

bool png_supported() {
  return png_rendering_available();
}

void write_loss_png(const std::string& path, const std::vector<RunResult>& runs) {
  write_file_atomic(path, render_png(loss_figure(runs)));
}

} // namespace flora::gpt2
