#include "figure.h"

#include <c10/util/Exception.h>

#ifdef FLORA_GPT2_HAVE_CAIRO
#include <cairo.h>

#include <cmath>
#include <memory>
#endif

namespace flora::gpt2 {

#ifdef FLORA_GPT2_HAVE_CAIRO
namespace {

struct SurfaceDeleter {
  void operator()(cairo_surface_t* s) const {
    cairo_surface_destroy(s);
  }
};
struct ContextDeleter {
  void operator()(cairo_t* cr) const {
    cairo_destroy(cr);
  }
};

void set_color(cairo_t* cr, Rgb c, double opacity = 1) {
  cairo_set_source_rgba(cr, c.r / 255.0, c.g / 255.0, c.b / 255.0, opacity);
}

struct CairoPainter {
  cairo_t* cr;

  void operator()(const Polyline& line) const {
    if (line.points.size() < 2) {
      return;
    }
    // One path per polyline: a translucent line darkens nowhere twice,
    // as in SVG.
    cairo_new_path(cr);
    for (const auto& p : line.points) {
      cairo_line_to(cr, p.x, p.y);
    }
    set_color(cr, line.color, line.opacity);
    cairo_set_line_width(cr, line.width);
    const double dashes[] = {kDashOn, kDashOff};
    cairo_set_dash(cr, dashes, line.dashed ? 2 : 0, 0);
    cairo_stroke(cr);
  }

  void operator()(const Disc& disc) const {
    cairo_new_path(cr);
    cairo_arc(cr, disc.centre.x, disc.centre.y, disc.radius, 0, 2 * M_PI);
    set_color(cr, disc.color);
    cairo_fill(cr);
  }

  void operator()(const Label& label) const {
    cairo_save(cr);
    cairo_set_font_size(cr, label.size);
    cairo_text_extents_t extents;
    cairo_text_extents(cr, label.text.c_str(), &extents);
    // SVG's text-anchor aligns the advance width, not the ink.
    const double shift = label.anchor == Anchor::start ? 0
        : label.anchor == Anchor::middle              ? -extents.x_advance / 2
                                                      : -extents.x_advance;
    cairo_translate(cr, label.at.x, label.at.y);
    if (label.vertical) {
      cairo_rotate(cr, -M_PI / 2);
    }
    cairo_move_to(cr, shift, 0);
    set_color(cr, label.color);
    cairo_show_text(cr, label.text.c_str());
    cairo_restore(cr);
  }
};

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

} // namespace

bool png_rendering_available() {
  return true;
}

std::string render_png(const Figure& figure) {
  TORCH_CHECK(figure.width > 0 && figure.height > 0, "render_png: empty figure");
  std::unique_ptr<cairo_surface_t, SurfaceDeleter> surface(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, figure.width, figure.height));
  TORCH_CHECK(
      cairo_surface_status(surface.get()) == CAIRO_STATUS_SUCCESS, "cairo: cannot create a ", figure.width, "x",
      figure.height, " image: ", cairo_status_to_string(cairo_surface_status(surface.get())));
  {
    std::unique_ptr<cairo_t, ContextDeleter> cr(cairo_create(surface.get()));
    cairo_set_source_rgb(cr.get(), 1, 1, 1);
    cairo_paint(cr.get());
    cairo_set_line_join(cr.get(), CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(cr.get(), CAIRO_LINE_CAP_BUTT);
    cairo_select_font_face(cr.get(), kFontFamily, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    for (const auto& shape : figure.shapes) {
      std::visit(CairoPainter{cr.get()}, shape);
    }
    TORCH_CHECK(
        cairo_status(cr.get()) == CAIRO_STATUS_SUCCESS, "cairo: drawing failed: ",
        cairo_status_to_string(cairo_status(cr.get())));
  }
  std::string bytes;
  const auto status = cairo_surface_write_to_png_stream(surface.get(), append_bytes, &bytes);
  TORCH_CHECK(status == CAIRO_STATUS_SUCCESS, "cairo: PNG encoding failed: ", cairo_status_to_string(status));
  return bytes;
}

#else

bool png_rendering_available() {
  return false;
}

std::string render_png(const Figure&) {
  TORCH_CHECK(false, "this build has no cairo (libcairo2-dev): it cannot draw PNG files");
}

#endif

} // namespace flora::gpt2
