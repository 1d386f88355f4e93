// The `kvgate` subcommands. Each takes the words after its name and returns
// the process exit code: 0 on success, 2 for bad input (one line on stderr),
// 1 when the operation itself failed.
#ifndef KVGATE_TOOLS_COMMANDS_H_
#define KVGATE_TOOLS_COMMANDS_H_

#include <string>
#include <vector>

namespace kvgate {

using CommandArgs = std::vector<std::string>;

int RunEstimateCommand(const CommandArgs& args);  // estimate_command.cc
int RunPlanCommand(const CommandArgs& args);      // plan_command.cc
int RunTrainCommand(const CommandArgs& args);     // train_command.cc
// Clients of a running kvgated (client_command.cc).
int RunAdmitCommand(const CommandArgs& args);
int RunReleaseCommand(const CommandArgs& args);
int RunRenewCommand(const CommandArgs& args);
int RunBudgetCommand(const CommandArgs& args);
int RunDemoCommand(const CommandArgs& args);

}  // namespace kvgate

#endif  // KVGATE_TOOLS_COMMANDS_H_
