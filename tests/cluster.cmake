# Cluster-area tests: CurveZMQ keys and ZAP, launcher detection, gemma-router (against
# in-process scripted replicas, then against real gemmad processes).
if(TARGET gm_cluster)
  gm_add_test(test_curve ${CMAKE_CURRENT_SOURCE_DIR}/test_curve.c LIBS gm_cluster TIMEOUT 60)
  gm_add_test(test_launch ${CMAKE_CURRENT_SOURCE_DIR}/test_launch.c LIBS gm_cluster TIMEOUT 30)
  if(TARGET gm_client)
    gm_add_test(test_router ${CMAKE_CURRENT_SOURCE_DIR}/test_router.c LIBS gm_cluster gm_client TIMEOUT 180)
    target_sources(test_router PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/test_router_fake.c)
  endif()
endif()
