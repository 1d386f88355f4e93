// Output helpers shared by the `kvgate` subcommands: one JSON object with
// --json, an aligned two-column table otherwise, and one clear error line.
#ifndef KVGATE_TOOLS_CLI_OUTPUT_H_
#define KVGATE_TOOLS_CLI_OUTPUT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace kvgate {

// Exit codes of the CLI.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 2;    // bad flags or input
inline constexpr int kExitFailure = 1;  // the operation itself failed

// Prints "kvgate <command>: error: <message>" on stderr as one line and
// returns kExitUsage.
int FailUsage(const std::string& command, const absl::Status& status);

// "16.06 GB (14.96 GiB)": decimal and binary units side by side.
std::string FormatBytes(uint64_t bytes);
// "8.03 B" / "124.44 M" for parameter counts.
std::string FormatCount(uint64_t count);

// Rows of a human-readable table, printed with aligned columns.
using TableRows = std::vector<std::pair<std::string, std::string>>;
void PrintTable(const std::string& title, const TableRows& rows);

// Prints `object` as one JSON object on stdout, keys in insertion order.
void PrintJson(const nlohmann::ordered_json& object);

}  // namespace kvgate

#endif  // KVGATE_TOOLS_CLI_OUTPUT_H_
