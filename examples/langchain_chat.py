"""LangChain's ChatOpenAI against the gateway (it reads the same two variables)."""

from langchain_openai import ChatOpenAI

llm = ChatOpenAI(model="tiny", temperature=0, max_tokens=24)
print(llm.invoke("Tell me about the market.").content)
