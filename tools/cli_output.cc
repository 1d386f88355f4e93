#include "tools/cli_output.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace kvgate {

int FailUsage(const std::string& command, const absl::Status& status) {
  // One line: newlines in a message would split it.
  std::string message =
      absl::StrReplaceAll(status.message(), {{"\n", " "}, {"\r", " "}});
  std::cerr << "kvgate " << command << ": error: " << message << std::endl;
  return kExitUsage;
}

std::string FormatBytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes < 1000) return absl::StrCat(bytes, " B");
  static constexpr const char* kDecimal[] = {"KB", "MB", "GB", "TB", "PB"};
  static constexpr const char* kBinary[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  int d = 0;
  double dv = b / 1e3;
  while (dv >= 1000 && d < 4) {
    dv /= 1000;
    ++d;
  }
  int i = 0;
  double iv = b / 1024;
  while (iv >= 1024 && i < 4) {
    iv /= 1024;
    ++i;
  }
  return absl::StrFormat("%.2f %s (%.2f %s)", dv, kDecimal[d], iv, kBinary[i]);
}

std::string FormatCount(uint64_t count) {
  const double c = static_cast<double>(count);
  if (count >= 1000000000ull) return absl::StrFormat("%.2f B", c / 1e9);
  if (count >= 1000000ull) return absl::StrFormat("%.2f M", c / 1e6);
  if (count >= 1000ull) return absl::StrFormat("%.2f K", c / 1e3);
  return absl::StrCat(count);
}

void PrintTable(const std::string& title, const TableRows& rows) {
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  if (!title.empty()) std::cout << title << "\n";
  for (const auto& [key, value] : rows) {
    std::cout << "  " << key << std::string(width - key.size() + 2, ' ')
              << value << "\n";
  }
  std::cout.flush();
}

void PrintJson(const nlohmann::ordered_json& object) {
  std::cout << object.dump(2) << std::endl;
}

}  // namespace kvgate
