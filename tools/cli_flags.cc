#include "tools/cli_flags.h"

#include <cmath>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kvgate {

FlagSet::FlagSet(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagSet::AddString(std::string name, std::string* target,
                        std::string help) {
  flags_.push_back({std::move(name), Kind::kString, target, std::move(help),
                    target->empty() ? "" : *target});
}

void FlagSet::AddUint64(std::string name, uint64_t* target, std::string help) {
  flags_.push_back({std::move(name), Kind::kUint64, target, std::move(help),
                    absl::StrCat(*target)});
}

void FlagSet::AddDouble(std::string name, double* target, std::string help) {
  flags_.push_back({std::move(name), Kind::kDouble, target, std::move(help),
                    absl::StrCat(*target)});
}

void FlagSet::AddBool(std::string name, bool* target, std::string help) {
  flags_.push_back({std::move(name), Kind::kBool, target, std::move(help),
                    *target ? "true" : "false"});
}

FlagSet::Flag* FlagSet::Find(absl::string_view name) {
  for (Flag& flag : flags_) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

bool FlagSet::WasSet(absl::string_view name) const {
  for (const Flag& flag : flags_) {
    if (flag.name == name) return flag.set;
  }
  return false;
}

absl::Status FlagSet::Assign(Flag& flag, absl::string_view value) {
  flag.set = true;
  switch (flag.kind) {
    case Kind::kString:
      *static_cast<std::string*>(flag.target) = std::string(value);
      return absl::OkStatus();
    case Kind::kUint64: {
      const absl::string_view trimmed = absl::StripAsciiWhitespace(value);
      uint64_t parsed = 0;
      if (absl::StartsWith(trimmed, "-") ||
          !absl::SimpleAtoi(trimmed, &parsed)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", flag.name, "=", value,
                         ": expected a non-negative integer below 2^64"));
      }
      *static_cast<uint64_t*>(flag.target) = parsed;
      return absl::OkStatus();
    }
    case Kind::kDouble: {
      double parsed = 0;
      if (!absl::SimpleAtod(value, &parsed) || !std::isfinite(parsed)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--", flag.name, "=", value, ": expected a finite number"));
      }
      *static_cast<double*>(flag.target) = parsed;
      return absl::OkStatus();
    }
    case Kind::kBool: {
      bool parsed = false;
      if (!absl::SimpleAtob(value, &parsed)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--", flag.name, "=", value, ": expected true or false"));
      }
      *static_cast<bool*>(flag.target) = parsed;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unreachable flag kind");
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' for '", command_,
                       "' (flags look like --name=value; see --help)"));
    }
    arg.remove_prefix(2);
    const size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    Flag* flag = Find(name);
    if (flag == nullptr && flag_is_negated(name)) {
      Flag* positive = Find(name.substr(2));
      if (positive != nullptr && positive->kind == Kind::kBool &&
          eq == absl::string_view::npos) {
        positive->set = true;
        *static_cast<bool*>(positive->target) = false;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown flag --", name, " for '", command_, "' (see --help)"));
    }
    if (eq != absl::string_view::npos) {
      if (absl::Status s = Assign(*flag, arg.substr(eq + 1)); !s.ok()) return s;
    } else if (flag->kind == Kind::kBool) {
      flag->set = true;
      *static_cast<bool*>(flag->target) = true;
    } else if (i + 1 < args.size()) {
      if (absl::Status s = Assign(*flag, args[++i]); !s.ok()) return s;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, " needs a value"));
    }
  }
  return absl::OkStatus();
}

bool FlagSet::flag_is_negated(absl::string_view name) {
  return absl::StartsWith(name, "no") && name.size() > 2;
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat("usage: kvgate ", command_, " [flags]\n\n",
                                 summary_, "\n\nflags:\n");
  for (const Flag& flag : flags_) {
    absl::StrAppend(&out, "  --", flag.name);
    if (flag.kind != Kind::kBool) absl::StrAppend(&out, "=VALUE");
    absl::StrAppend(&out, "\n      ", flag.help);
    if (!flag.default_text.empty()) {
      absl::StrAppend(&out, " (default: ", flag.default_text, ")");
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "  --help\n      show this text\n");
  return out;
}

}  // namespace kvgate
