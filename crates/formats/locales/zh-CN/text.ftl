text-title = 消息
text-body = 正文
text-body-help = 发送方语言的自由文本。
