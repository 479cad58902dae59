# The user-facing scripts: scripts/deps.sh under a busy package manager.
find_program(GM_PYTHON3 python3)
if(GM_PYTHON3)
  add_test(NAME deps_lock COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_deps_lock.sh ${CMAKE_SOURCE_DIR})
  set_tests_properties(deps_lock PROPERTIES TIMEOUT 120)
endif()

# cmake --install, then the programs work from PATH and the client library from pkg-config.
add_test(NAME install_from_path COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_install.sh ${CMAKE_BINARY_DIR})
set_tests_properties(install_from_path PROPERTIES TIMEOUT 300)

# docs/ARCHITECTURE.md's include rules (git ls-files: needs the source tree's .git, as CI has).
find_program(GM_GIT git)
if(GM_GIT AND EXISTS ${CMAKE_SOURCE_DIR}/.git)
  add_test(NAME layering COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_layering.sh ${CMAKE_SOURCE_DIR})
endif()
