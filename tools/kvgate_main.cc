// kvgate: memory estimates and GPU plans for Hugging Face models, and a
// client for the kvgated admission sidecar.
#include <array>
#include <iostream>
#include <string>
#include <vector>

#include "tools/cli_output.h"
#include "tools/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(const kvgate::CommandArgs&);
  const char* summary;
};

constexpr std::array<Command, 8> kCommands = {{
    {"estimate", kvgate::RunEstimateCommand,
     "memory to serve a model: weights, KV cache, activations"},
    {"plan", kvgate::RunPlanCommand,
     "size the KV cache and concurrency of a model on a GPU"},
    {"train", kvgate::RunTrainCommand,
     "memory per GPU to train or fine-tune a model, and GPUs needed"},
    {"admit", kvgate::RunAdmitCommand,
     "ask a running kvgated for memory for a batch"},
    {"release", kvgate::RunReleaseCommand, "release a lease"},
    {"renew", kvgate::RunRenewCommand, "extend a lease"},
    {"budget", kvgate::RunBudgetCommand, "show a model pool's budget"},
    {"demo", kvgate::RunDemoCommand,
     "a short demonstration load against kvgated"},
}};

void PrintUsage(std::ostream& out) {
  out << "usage: kvgate <command> [flags]   (kvgate <command> --help; "
         "kvgate --version)\n\n"
         "commands:\n";
  for (const Command& c : kCommands) {
    out << "  " << c.name << std::string(10 - std::string(c.name).size(), ' ')
        << c.summary << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(std::cerr);
    return kvgate::kExitUsage;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(std::cout);
    return kvgate::kExitOk;
  }
  if (name == "--version" || name == "version") {
    std::cout << "kvgate " << KVGATE_VERSION << " (revision " << KVGATE_REVISION
              << ")" << std::endl;
    return kvgate::kExitOk;
  }
  const kvgate::CommandArgs args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(args);
  }
  std::cerr << "kvgate: error: unknown command '" << name
            << "' (try kvgate --help)" << std::endl;
  return kvgate::kExitUsage;
}
