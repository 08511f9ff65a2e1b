# pragma version ~=0.4.3
"""
@title Multicall3
@notice The `tryAggregate` and `aggregate3` entry points of the common
        Multicall3 contract, which the x402 SDK uses to batch reads; a dev chain
        installs this at Multicall3's canonical address.
@dev Bounded: at most MAX_CALLS calls, CALL_DATA_MAX bytes of calldata and
     RETURN_DATA_MAX bytes of return data per call (longer return data is cut).
"""

struct Call:
    target: address
    callData: Bytes[CALL_DATA_MAX]

struct Call3:
    target: address
    allowFailure: bool
    callData: Bytes[CALL_DATA_MAX]

struct Result:
    success: bool
    returnData: Bytes[RETURN_DATA_MAX]

MAX_CALLS: constant(uint256) = 32
CALL_DATA_MAX: constant(uint256) = 4096
RETURN_DATA_MAX: constant(uint256) = 1024


@external
def tryAggregate(requireSuccess: bool, calls: DynArray[Call, MAX_CALLS]) -> DynArray[Result, MAX_CALLS]:
    results: DynArray[Result, MAX_CALLS] = []
    for c: Call in calls:
        ok: bool = False
        out: Bytes[RETURN_DATA_MAX] = b""
        ok, out = raw_call(c.target, c.callData, max_outsize=RETURN_DATA_MAX, revert_on_failure=False)
        assert ok or not requireSuccess, "Multicall3: call failed"
        results.append(Result(success=ok, returnData=out))
    return results


@external
def aggregate3(calls: DynArray[Call3, MAX_CALLS]) -> DynArray[Result, MAX_CALLS]:
    results: DynArray[Result, MAX_CALLS] = []
    for c: Call3 in calls:
        ok: bool = False
        out: Bytes[RETURN_DATA_MAX] = b""
        ok, out = raw_call(c.target, c.callData, max_outsize=RETURN_DATA_MAX, revert_on_failure=False)
        assert ok or c.allowFailure, "Multicall3: call failed"
        results.append(Result(success=ok, returnData=out))
    return results
