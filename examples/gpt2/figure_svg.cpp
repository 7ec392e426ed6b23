#include "figure.h"

#include <cstdio>
#include <sstream>

namespace flora::gpt2 {
namespace {

std::string hex(Rgb c) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "#%02x%02x%02x", c.r, c.g, c.b);
  return buffer;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Coordinates with two decimals: sub-pixel exact, and stable text.
std::string num(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.2f", v);
  std::string s = buffer;
  while (s.back() == '0') {
    s.pop_back();
  }
  if (s.back() == '.') {
    s.pop_back();
  }
  return s == "-0" ? "0" : s;
}

struct SvgWriter {
  std::ostringstream& out;

  void operator()(const Polyline& line) const {
    if (line.points.size() < 2) {
      return;
    }
    out << "<polyline fill=\"none\" stroke=\"" << hex(line.color) << "\" stroke-width=\"" << num(line.width)
        << "\" stroke-linejoin=\"round\"";
    if (line.opacity < 1) {
      out << " stroke-opacity=\"" << num(line.opacity) << '"';
    }
    if (line.dashed) {
      out << " stroke-dasharray=\"" << num(kDashOn) << ' ' << num(kDashOff) << '"';
    }
    out << " points=\"";
    for (size_t i = 0; i < line.points.size(); ++i) {
      out << (i ? " " : "") << num(line.points[i].x) << ',' << num(line.points[i].y);
    }
    out << "\"/>\n";
  }

  void operator()(const Disc& disc) const {
    out << "<circle cx=\"" << num(disc.centre.x) << "\" cy=\"" << num(disc.centre.y) << "\" r=\"" << num(disc.radius)
        << "\" fill=\"" << hex(disc.color) << "\"/>\n";
  }

  void operator()(const Label& label) const {
    static const char* const anchors[] = {"start", "middle", "end"};
    out << "<text x=\"" << num(label.at.x) << "\" y=\"" << num(label.at.y) << "\" font-size=\"" << num(label.size)
        << "\" fill=\"" << hex(label.color) << "\" text-anchor=\"" << anchors[static_cast<int>(label.anchor)] << '"';
    if (label.vertical) {
      out << " transform=\"rotate(-90 " << num(label.at.x) << ' ' << num(label.at.y) << ")\"";
    }
    out << '>' << xml_escape(label.text) << "</text>\n";
  }
};

} // namespace

std::string render_svg(const Figure& figure) {
  std::ostringstream out;
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << figure.width << "\" height=\"" << figure.height
      << "\" viewBox=\"0 0 " << figure.width << ' ' << figure.height << "\" font-family=\"" << kFontFamily
      << ", sans-serif\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (const auto& shape : figure.shapes) {
    std::visit(SvgWriter{out}, shape);
  }
  out << "</svg>\n";
  return out.str();
}

} // namespace flora::gpt2
