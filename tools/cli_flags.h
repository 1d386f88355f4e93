// FlagSet: the flags of one `kvgate` subcommand, declared as a table.
//
// Each subcommand owns its FlagSet (no global flags), so `kvgate plan` rejects
// a flag that only `kvgate train` knows, and `--help` lists exactly the flags
// of the command asked. Accepted forms: `--name=value`, `--name value`, and
// `--name` / `--noname` for booleans. Numbers are checked: a negative value,
// a value that does not fit, or trailing garbage is InvalidArgument naming
// the flag.
#ifndef KVGATE_TOOLS_CLI_FLAGS_H_
#define KVGATE_TOOLS_CLI_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvgate {

class FlagSet {
 public:
  FlagSet(std::string command, std::string summary);

  // Registers a flag writing into `target`, whose current value is the
  // default shown in the usage text. Targets must outlive Parse().
  void AddString(std::string name, std::string* target, std::string help);
  void AddUint64(std::string name, uint64_t* target, std::string help);
  void AddDouble(std::string name, double* target, std::string help);
  void AddBool(std::string name, bool* target, std::string help);

  // Parses args (the words after the subcommand). `--help`/`-h` sets
  // help_requested() and stops. Unknown flags, stray positional words and
  // malformed values are InvalidArgument.
  absl::Status Parse(const std::vector<std::string>& args);

  // True when `name` was given on the command line.
  bool WasSet(absl::string_view name) const;
  bool help_requested() const { return help_requested_; }
  std::string Usage() const;

 private:
  enum class Kind { kString, kUint64, kDouble, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    std::string default_text;
    bool set = false;
  };
  absl::Status Assign(Flag& flag, absl::string_view value);
  Flag* Find(absl::string_view name);
  static bool flag_is_negated(absl::string_view name);

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace kvgate

#endif  // KVGATE_TOOLS_CLI_FLAGS_H_
